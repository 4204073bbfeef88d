"""ComfyUI's official Wan templates, all ten, run whole by graphrt, against a replay of ComfyUI's algorithm node
by node in torch on the same tiny weights (tests/comfy/comfy_replay.py).

Templates: Wan2.1 T2V (text_to_video_wan: EmptyHunyuanLatentVideo, KSampler uni_pc), Wan2.1 I2V
(image_to_video_wan: CLIPVisionEncode, WanImageToVideo, KSampler uni_pc), Wan2.1 FLF2V (wan2.1_flf2v_720_f16:
two images and their CLIP tokens, WanFirstLastFrameToVideo), Wan2.2 A14B T2V, I2V and FLF2V
(video_wan2_2_14B_t2v and _i2v inside a subgraph, video_wan2_2_14B_flf2v: two experts chained through two
KSamplerAdvanced with leftover noise, euler), Wan2.2 TI2V-5B (video_wan2_2_5B_ti2v: Wan22ImageToVideoLatent,
the 48-channel Wan2.2 VAE, KSampler uni_pc) and VACE 14B T2V / V2V / reference-to-video (WanVaceToVideo,
LoraLoader with the CausVid LoRA, KSampler uni_pc at cfg 1, TrimVideoLatent). Two templates ship with a
switch a user turns, run both ways: TI2V's LoadImage is bypassed as shipped (text-to-video on an empty
48-channel latent); "+start_image" un-bypasses it, so Wan22ImageToVideoLatent hands KSampler a LATENT with
the encoded frame and a `noise_mask`. The A14B T2V subgraph's LoRA switch is off as shipped; "+lightx2v"
turns it on (LoraLoaderModelOnly on both experts, cfg 1).

Each template is loaded with Workflow.load and shrunk exactly as test_templates_run.py does (32×32, 5 frames,
2 steps, the Wan2.2 experts split at step 1; also at 3 steps, for uni_pc's second order and a two-step
second expert), then run by graphrt's Executor on the shared tiny models folder, with input files written
as test_templates_run's fixture writes them. The replay takes the same shrunk graph and computes every node
as ComfyUI's source does (comfy_replay.py cites it) with diffusers' / transformers' torch modules: UMT5
prompt embeddings, clip_preprocess and the penultimate CLIP layer, LoadImage (PIL), the Wan nodes of
comfy_extras/nodes_wan.py, LoRA merging, WAN21 / WAN21_Vace concat_cond and extra_conds (mask channels,
process_in of the concat image and VACE frames, CLIP tokens, vace strength), WAN22 under a noise mask
(prepare_mask, KSamplerX0Inpaint keeping the known frame clean before and after each model call,
process_timestep's per-frame timesteps, 0 on the known frame), the Wan21 / Wan22 latent formats,
BaseModel's CONST denoised, CFG (cfg 1 skips the uncond pass), KSampler / KSamplerAdvanced sigmas and noise,
euler and uni_pc, VAEDecode. It never calls graphrt's nodes. One exception to "as ComfyUI": ComfyUI decodes
LoadVideo's file with PyAV, not installed here, so the replay reads the V2V control video through the ffmpeg
binary (imageio_ffmpeg).

Compared: every sampler's LATENT (relative error max|ours − ref| / max|ref| ≤ 1e-4; measured ≤ 3e-5) and
the decoded frames that go to CreateVideo (≤ 5e-4; measured ≤ 1.1e-4). Our transformer follows diffusers'
float32 numerics and the replay uses diffusers' float32 modules, so the two agree to float rounding.
test_a_changed_input_is_noticed shows the comparisons can fail: one input changed in the replay (a
conditioning input, the shift, the LoRA strength, TI2V's start frame) moves the frames far past the
tolerance.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from graphrt import Executor, Workflow
from graphrt.registry import load_node_packs
from nodes.comfy.comfy_files import set_input_dir
from nodes.wan.checkpoints import model_folders
from tests.comfy.comfy_replay import ComfyReplay
from tests.comfy.test_templates_run import TEMPLATES, _is_link, _set_source, shrink
from tests.comfy.tiny_comfy_files import shared_models, tiny_image
from tests.wan.parity import rel_err

LATENT_TOL, FRAMES_TOL = 1e-4, 5e-4
NAMES = ["image_to_video_wan", "wan2.1_flf2v_720_f16", "video_wan2_2_14B_i2v", "video_wan2_2_14B_flf2v",
         "video_wan_vace_14B_t2v", "video_wan_vace_14B_v2v", "video_wan_vace_14B_ref2v",
         "text_to_video_wan", "video_wan2_2_14B_t2v", "video_wan2_2_14B_t2v+lightx2v",
         "video_wan2_2_5B_ti2v", "video_wan2_2_5B_ti2v+start_image"]
SAMPLERS = ("KSampler", "KSamplerAdvanced")


def load_template(name: str) -> Workflow:
    """The template `name` names, shrunk; "+variant" is the template with one of its own switches turned as a
    user would: "+start_image" un-bypasses TI2V's LoadImage (shipped bypassed: text-to-video), "+lightx2v"
    turns the A14B T2V subgraph's LoRA switch on (the lightx2v LoRAs on both experts, its step count, split
    and cfg 1)."""
    template, _, variant = name.partition("+")
    assert variant in ("", "start_image", "lightx2v"), name
    data = json.loads((TEMPLATES / f"{template}.json").read_text(encoding="utf-8"))
    if variant == "start_image":
        images = [node for node in data["nodes"] if node["type"] == "LoadImage"]
        assert len(images) == 1 and images[0]["mode"] == 4
        images[0]["mode"] = 0
    wf = Workflow.from_dict(data, name)
    if variant == "lightx2v":
        switches = [node for node in wf.nodes.values() if node["class_type"] == "PrimitiveBoolean"]
        assert len(switches) == 1 and switches[0]["inputs"]["value"] is False
        switches[0]["inputs"]["value"] = True
    return shrink(wf)


def _ids(wf: Workflow, *kinds) -> list:
    return sorted(nid for nid, node in wf.nodes.items() if node["class_type"] in kinds)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The shared tiny models folder, and the input files the templates load, as test_templates_run's
    fixture writes them but each LoadImage its own picture (FLF2V's first and last frames differ, so a
    swap of the two, or of their CLIP tokens, shows)."""
    load_node_packs()
    models = shared_models(tmp_path_factory)
    input_dir = tmp_path_factory.mktemp("replay-input")
    from PIL import Image
    from nodes.wan import media
    for i, name in enumerate(NAMES):
        for j, node in enumerate(load_template(name).nodes.values()):
            if node["class_type"] == "LoadImage":
                Image.fromarray((tiny_image(48, 40, seed=100 * i + j) * 255).round().astype(np.uint8)).save(
                    input_dir / node["inputs"]["image"])
            elif node["class_type"] == "LoadVideo":
                media.save_mp4(np.stack([tiny_image(48, 40, seed=100 * i + k) for k in range(9)]),
                               input_dir / node["inputs"]["file"], fps=16)
    models_before, input_before = model_folders.set_models_dir(models.root), set_input_dir(input_dir)
    # torch's tiny ops run several times faster on one thread when both cores are busy (MindSpore, other jobs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield models, input_dir
    torch.set_num_threads(threads)
    model_folders.set_models_dir(models_before)
    set_input_dir(input_before)


def with_steps(wf: Workflow, steps: int) -> Workflow:
    """shrink's graph with another number of sampling steps (the Wan2.2 experts' split stays at step 1)."""
    for node in wf.nodes.values():
        if node["class_type"] in SAMPLERS:
            if _is_link(node["inputs"]["steps"]):
                _set_source(wf.nodes, node["inputs"]["steps"], steps)
            else:
                node["inputs"]["steps"] = steps
    return wf


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory):
    """Each template shrunk, run once by graphrt and replayed once: {(name, steps): (workflow, outputs of its
    samplers and VAEDecode, the replay)}."""
    cache = {}

    def run(name, steps=2):
        if (name, steps) not in cache:
            wf = with_steps(load_template(name), steps)
            out_dir = tmp_path_factory.mktemp("replay-out")
            result = Executor(output_dir=str(out_dir)).run(wf, targets=_ids(wf, *SAMPLERS, "VAEDecode"))
            cache[name, steps] = wf, result.outputs, ComfyReplay(wf.nodes, *folders)
        return cache[name, steps]
    return run


def _latent(out):
    lat = out["LATENT"]
    assert lat["normalized"] is False              # ComfyUI's raw VAE-space LATENT
    return lat["samples"].asnumpy()


@pytest.mark.parametrize("steps", [2, 3])       # 3: uni_pc's second order, a two-step second expert
@pytest.mark.parametrize("name", NAMES)
def test_template_equals_comfys_algorithm(folders, runs, name, steps):
    wf, ours, ref = runs(name, steps)
    samplers, decodes = _ids(wf, *SAMPLERS), _ids(wf, "VAEDecode")
    assert samplers and len(decodes) == 1
    for nid in samplers:                            # the Wan2.2 templates: both experts' stages
        err = rel_err(_latent(ours[nid]), ref.output(nid)[0]["samples"].numpy())
        assert err <= LATENT_TOL, (name, nid, err)
    frames = ours[decodes[0]]["IMAGE"]
    assert frames.shape == (5, 32, 32, 3)
    err = rel_err(frames, ref.output(decodes[0])[0].numpy())
    assert err <= FRAMES_TOL, (name, err)


def _flip(image):
    return torch.flip(image, dims=[2])


# One conditioning input per template changed in the replay, as a bug in that part of our graph would.
CHANGES = {
    "image_to_video_wan": {("CLIPVisionEncode", "crop"): lambda crop: "center"},        # the CLIP tokens only
    "wan2.1_flf2v_720_f16": {("WanFirstLastFrameToVideo", "start_image"): _flip},        # the first frame
    "video_wan2_2_14B_i2v": {("WanImageToVideo", "start_image"): _flip},                 # the concat latent
    "video_wan2_2_14B_flf2v": {("WanFirstLastFrameToVideo", "start_image"): _flip},
    "video_wan_vace_14B_t2v": {("WanVaceToVideo", "strength"): lambda s: 0.9 * s},       # vace strength
    "video_wan_vace_14B_v2v": {("WanVaceToVideo", "control_video"): _flip},              # the control video
    "video_wan_vace_14B_ref2v": {("LoraLoader", "strength_model"): lambda s: 0.0},        # the LoRA
    "text_to_video_wan": {("CLIPTextEncode", "text"): lambda t: t + " at night"},        # the prompts
    "video_wan2_2_14B_t2v": {("ModelSamplingSD3", "shift"): lambda s: 8.0},             # the model's own shift
    "video_wan2_2_14B_t2v+lightx2v": {("LoraLoaderModelOnly", "strength_model"): lambda s: 0.5 * s},
    "video_wan2_2_5B_ti2v": {("CLIPTextEncode", "text"): lambda t: t + " at night"},
    "video_wan2_2_5B_ti2v+start_image": {("Wan22ImageToVideoLatent", "start_image"): _flip},  # the start frame
}


@pytest.mark.parametrize("name", NAMES)
def test_a_changed_input_is_noticed(folders, runs, name):
    wf, ours, ref = runs(name)
    decode = _ids(wf, "VAEDecode")[0]
    ref.output(decode)
    changed = ComfyReplay(wf.nodes, *folders, changes=CHANGES[name], reuse=ref).output(decode)[0].numpy()
    err = rel_err(ours[decode]["IMAGE"], changed)
    assert err > 20 * FRAMES_TOL, (name, err)
