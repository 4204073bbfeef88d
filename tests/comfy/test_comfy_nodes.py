"""The comfy pack's nodes against ComfyUI's own formulas, on tiny models written in ComfyUI's file formats.

ComfyUI itself is not installable here, so every expected value is computed with torch (in the test or by
the shared formulas of comfy_replay.py), following the ComfyUI function cited next to it (ComfyUI at
a125cd84, comfy_extras/nodes_wan.py and friends), on the torch modules whose weights the model files hold:
diffusers' AutoencoderKLWan is the network of ComfyUI's WanVAE, transformers' UMT5 / CLIP those of its text
and vision encoders.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import mindspore as ms

from graphrt import Executor, GraphBuilder, Workflow
from graphrt.registry import get_node_class, load_node_packs
from graphrt.validate import validate
from nodes.comfy.comfy_files import set_input_dir
from nodes.wan.checkpoints import model_folders
from nodes.wan.pipelines.conditioning import CONCAT_LATENTS
from nodes.wan.pipelines.vace_conditioning import VACE_CONTROL, VACE_STRENGTH
# ComfyUI's formulas, in torch
from tests.comfy.comfy_replay import (clip_vision_encode, comfy_tokens, common_upscale, concat_cond, process_in,
                                      process_out, umt5, upscale_images, vae_encode)
from tests.comfy.tiny_comfy_files import shared_models, tiny_image
from tests.wan.parity import rel_err

TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    load_node_packs()
    m = shared_models(tmp_path_factory)
    before = model_folders.set_models_dir(m.root)
    yield m
    model_folders.set_models_dir(before)


def _np(x):
    return np.asarray(x.asnumpy() if hasattr(x, "asnumpy") else x, np.float32)


def run(g: GraphBuilder, *targets, tmp_path=None):
    res = Executor(output_dir=str(tmp_path or "output")).run(g.to_workflow(), targets=list(targets))
    return res.outputs


# ---- models folder ------------------------------------------------------------------------------------------

def test_models_folder_layout_extra_paths_and_missing_file_errors(tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "unet").mkdir(parents=True)
    (root / "diffusion_models" / "sub").mkdir(parents=True)
    (root / "unet" / "a.safetensors").write_bytes(b"x")
    (root / "diffusion_models" / "sub" / "b.safetensors").write_bytes(b"x")
    (root / "diffusion_models" / "notes.txt").write_text("not a model")
    other = tmp_path / "elsewhere"
    (other / "models" / "unet").mkdir(parents=True)
    (other / "models" / "unet" / "c.safetensors").write_bytes(b"x")
    (other / "vae_a").mkdir()
    (other / "vae_b").mkdir()
    (other / "vae_b" / "v.safetensors").write_bytes(b"x")
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text("comfyui:\n  base_path: elsewhere\n  unet: models/unet\n  vae: |\n    vae_a\n    vae_b\n"
                         "a111:\n  clip: /nonexistent/clip\n")
    monkeypatch.setenv(model_folders.MODELS_DIR_ENV, str(root))
    monkeypatch.setenv(model_folders.EXTRA_PATHS_ENV, str(yaml_file))
    try:
        assert model_folders.list_files("diffusion_models") == ["a.safetensors", "c.safetensors", "sub/b.safetensors"]
        load_node_packs()     # the COMBO choices a schema asks the node for
        assert get_node_class("UNETLoader").input_choices("unet_name") == model_folders.list_files("diffusion_models")
        assert get_node_class("UNETLoader").input_choices("weight_dtype") is None
        assert model_folders.folder_paths("vae")[1:] == [other / "vae_a", other / "vae_b"]
        assert model_folders.find_file("vae", "v.safetensors") == other / "vae_b" / "v.safetensors"
        assert model_folders.folder_paths("clip")[-1].as_posix() == "/nonexistent/clip"   # legacy name
        with pytest.raises(model_folders.ModelFileNotFound) as e:
            model_folders.find_file("diffusion_models", "missing.safetensors")
        assert str(root / "unet") in str(e.value) and "sub/b.safetensors" in str(e.value)
        with pytest.raises(model_folders.ModelFileNotFound, match="may not leave"):
            model_folders.find_file("diffusion_models", "../x.safetensors")
        # is_default sections are searched first
        yaml_file.write_text(f"first:\n  base_path: {other}\n  is_default: true\n  unet: models/unet\n")
        assert model_folders.folder_paths("diffusion_models")[0] == other / "models" / "unet"
        # set_models_dir wins over the environment
        before = model_folders.set_models_dir(other / "models")
        assert model_folders.list_files("diffusion_models") == ["c.safetensors"]
    finally:
        model_folders.set_models_dir(before)

    load_node_packs()
    monkeypatch.setenv(model_folders.EXTRA_PATHS_ENV, "")
    g = GraphBuilder()
    g.node("UNETLoader", id="1", unet_name="wan_missing.safetensors", weight_dtype="default")
    errors = validate(g.to_workflow())
    assert len(errors) == 1 and errors[0].node_id == "1" and errors[0].input == "unet_name"
    msg = str(errors[0])
    assert "wan_missing.safetensors" in msg and str(root / "unet") in msg and "a.safetensors" in msg


# ---- loaders and text encoding -------------------------------------------------------------------------------

def test_unet_loader_reads_fp16_and_fp8_scaled_files_as_comfyui_detects_them(models, tmp_path):
    g = GraphBuilder()
    g.node("UNETLoader", id="fp16", unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    g.node("UNETLoader", id="fp8", unet_name="wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
           weight_dtype="fp8_e4m3fn_fast")
    g.node("UNETLoader", id="vace", unet_name="wan2.1_vace_14B_fp16.safetensors", weight_dtype="default")
    out = run(g, "fp16", "fp8", "vace", tmp_path=tmp_path)
    for nid, name in (("fp16", "wan2.1_t2v_1.3B_fp16.safetensors"),
                      ("fp8", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")):
        model = out[nid]["MODEL"]
        assert model.config["num_attention_heads"] == 1 and model.config["attention_head_dim"] == 128
        assert model.scheduler_config["flow_shift"] == 8.0        # ComfyUI's Wan sampling shift
        ours = {n: p.asnumpy() for n, p in model.transformer.parameters_and_names()}
        ref = models.modules[name].state_dict()
        # fp8 weights times their scales are the values the reference module holds
        assert np.array_equal(ours["blocks.0.attn1.to_q.weight"], ref["blocks.0.attn1.to_q.weight"].numpy())
    assert out["vace"]["MODEL"].config["vace_layers"] == [0]


def test_clip_text_encode_equals_diffusers_prompt_embeds(models, tmp_path):
    """diffusers' WanPipeline._get_t5_prompt_embeds: the encoder's last hidden state of the prompt's tokens
    (EOS included), attention-masked, cut to the prompt and zero-padded to 512 rows. ComfyUI's CLIPTextEncode
    gives the same for an unweighted prompt (comfy/sd1_clip.py: min_length 512, pad 0, zero_out_masked)."""
    prompt = "a red fox in the snow, tracking camera"
    g = GraphBuilder()
    clip = g.node("CLIPLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", device="default")
    g.node("CLIPTextEncode", id="enc", text=prompt, clip=clip[0])
    cond = run(g, "enc", tmp_path=tmp_path)["enc"]["CONDITIONING"]
    ids = comfy_tokens(models.spiece, prompt)
    encoder = models.modules["umt5"]
    with torch.no_grad():
        mask = torch.ones(1, len(ids), dtype=torch.long)
        hidden = encoder(torch.tensor([ids]), attention_mask=mask).last_hidden_state
    ref = torch.cat([hidden[0], hidden.new_zeros(512 - len(ids), hidden.shape[-1])])[None].numpy()
    ours = _np(cond.embeds)
    assert ours.shape == (1, 512, 32)
    assert rel_err(ours, ref) < TOL
    assert np.all(ours[0, len(ids):] == 0)


def test_clip_loader_encoder_loads_on_first_encode_streams_and_is_released_under_the_budget(models, tmp_path,
                                                                                            monkeypatch):
    """CLIPLoader's UMT5 (22.8 GB in float32 for the real one) is held as the Wan loaders hold it: loaded at
    the first encode, released when another model needs the room, and streamed from its file ("auto")
    when it does not fit the budget, with the same numbers."""
    from nodes.wan.backend import memory
    from nodes.wan.models import residency
    residency.release_all()
    g = GraphBuilder()
    clip = g.node("CLIPLoader", id="clip", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    g.node("CLIPTextEncode", id="enc", text="a red fox", clip=clip[0])
    out = run(g, "clip", "enc", tmp_path=tmp_path)
    text, want = out["clip"]["CLIP"], _np(out["enc"]["CONDITIONING"].embeds)
    assert text.encoder.loaded and text.encoder.offload == "none"
    assert any(name.startswith("text encoder") for name, _ in residency.resident())
    monkeypatch.setattr(memory, "room", lambda: -1)          # another model needs all the room
    assert any(name.startswith("text encoder") for name in residency.reserve(1))
    assert not text.encoder.loaded and text.cache_nbytes() == 0
    again = run(g, "clip", "enc", tmp_path=tmp_path)         # a new graph: loads on its first encode, streamed
    assert np.array_equal(_np(again["enc"]["CONDITIONING"].embeds), want)
    assert again["clip"]["CLIP"].encoder.offload == "blocks"
    residency.release_all()


def test_clip_text_encode_weights_follow_comfyui(models, tmp_path):
    """comfy/sd1_clip.py token_weights + ClipTokenWeightEncoder: "(fox:1.5)" tokens move away from the empty
    prompt's rows, z = (z - z_empty) * 1.5 + z_empty; "\\(" stays a literal parenthesis."""
    g = GraphBuilder()
    clip = g.node("CLIPLoader", clip_name="umt5_xxl_fp16.safetensors", type="wan")
    g.node("CLIPTextEncode", id="w", text="a red (fox:1.5) \\(snow\\)", clip=clip[0])
    ours = _np(run(g, "w", tmp_path=tmp_path)["w"]["CONDITIONING"].embeds)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=models.spiece)
    parts = [("a red ", 1.0), ("fox", 1.5), (" (snow)", 1.0)]
    ids, weights = [], []
    for text, w in parts:
        toks = sp.encode(text)
        ids += toks
        weights += [w] * len(toks)
    ids += [1]
    weights += [1.0]
    n = len(ids)
    ids += [0] * (512 - n)
    weights += [1.0] * (512 - n)
    encoder = models.modules["umt5"]
    z = umt5(encoder, ids, n)[0]
    z_empty = umt5(encoder, [1] + [0] * 511, 1)[0]
    for j, w in enumerate(weights):
        if w != 1.0:
            z[j] = (z[j] - z_empty[j]) * w + z_empty[j]
    assert rel_err(ours[0], z.numpy()) < TOL


def test_clip_loader_refuses_other_text_encoder_types(models):
    g = GraphBuilder()
    g.node("CLIPLoader", id="c", clip_name="umt5_xxl_fp16.safetensors", type="sd3")
    errors = validate(g.to_workflow())
    assert len(errors) == 1 and "type 'sd3' is not supported" in errors[0].message


def test_clip_vision_encode_follows_comfyui_preprocessing(models, tmp_path):
    """comfy/clip_vision.py clip_preprocess (antialiased bicubic, 8-bit levels, OpenAI mean/std; crop=center
    keeps the aspect, none squashes) and the penultimate layer's states (intermediate_output=-2)."""
    image = np.stack([tiny_image(40, 56, seed=3)]).astype(np.float32)
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    from PIL import Image
    Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(input_dir / "start.png")
    set_input_dir(input_dir)
    try:
        g = GraphBuilder()
        cv = g.node("CLIPVisionLoader", clip_name="clip_vision_h.safetensors")
        img = g.node("LoadImage", image="start.png")
        g.node("CLIPVisionEncode", id="center", clip_vision=cv[0], image=img[0], crop="center")
        g.node("CLIPVisionEncode", id="none", clip_vision=cv[0], image=img[0], crop="none")
        out = run(g, "center", "none", tmp_path=tmp_path)
    finally:
        set_input_dir(None)
    clip = models.modules["clip_vision_h.safetensors"]
    for crop in ("center", "none"):
        ref = clip_vision_encode(clip, torch.from_numpy(image), crop).numpy()
        assert rel_err(_np(out[crop]["CLIP_VISION_OUTPUT"]), ref) < TOL


# ---- conditioning nodes --------------------------------------------------------------------------------------

@pytest.fixture()
def images_in(tmp_path):
    """Two images of another aspect ratio than the video, in the input folder (LoadImage's file names)."""
    from PIL import Image
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    arrays = {}
    for i, name in enumerate(("first.png", "last.png", "ref.png")):
        arr = tiny_image(40, 56, seed=10 + i)
        Image.fromarray((arr * 255).round().astype(np.uint8)).save(input_dir / name)
        arrays[name] = arr[None].astype(np.float32)
    set_input_dir(input_dir)
    yield arrays
    set_input_dir(None)


def _text(g):
    clip = g.node("CLIPLoader", clip_name="umt5_xxl_fp16.safetensors", type="wan")
    return g.node("CLIPTextEncode", text="a fox", clip=clip[0]), g.node("CLIPTextEncode", text="", clip=clip[0])


def test_wan_image_to_video_equals_comfyui(models, images_in, tmp_path):
    """comfy_extras/nodes_wan.py WanImageToVideo.execute, then WAN21.concat_cond (model_base.py)."""
    g = GraphBuilder()
    pos, neg = _text(g)
    vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
    img = g.node("LoadImage", image="first.png")
    g.node("WanImageToVideo", id="i2v", positive=pos[0], negative=neg[0], vae=vae[0], width=32, height=48, length=9,
           batch_size=2, start_image=img[0])
    out = run(g, "i2v", tmp_path=tmp_path)["i2v"]
    vae_t = models.modules["wan_2.1_vae.safetensors"]
    start = upscale_images(images_in["first.png"][:9], 32, 48)
    image = torch.ones((9, 48, 32, 3)) * 0.5
    image[:start.shape[0]] = start
    concat = vae_encode(vae_t, image)
    mask = torch.ones((1, 1, 3, concat.shape[-2], concat.shape[-1]))
    mask[:, :, :((start.shape[0] - 1) // 4) + 1] = 0.0
    ref = concat_cond((2, 16) + tuple(concat.shape[2:]), 20, concat, mask).numpy()   # batch 2, I2V model
    for cond in (out["positive"], out["negative"]):
        assert rel_err(_np(cond.extras[CONCAT_LATENTS]), ref) < TOL
    latent = out["latent"]
    assert latent["normalized"] is False and tuple(latent["samples"].shape) == (2, 16, 3, 6, 4)
    assert not np.any(_np(latent["samples"]))


def test_wan_first_last_frame_to_video_equals_comfyui(models, images_in, tmp_path):
    """WanFirstLastFrameToVideo.execute: per-pixel-frame mask folded to 4 channels, both images in the video,
    CLIP tokens of both images kept (two rows, the layout our FLF2V transformer joins)."""
    g = GraphBuilder()
    pos, neg = _text(g)
    vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
    first, last = g.node("LoadImage", image="first.png"), g.node("LoadImage", image="last.png")
    cv = g.node("CLIPVisionLoader", clip_name="clip_vision_h.safetensors")
    e1 = g.node("CLIPVisionEncode", clip_vision=cv[0], image=first[0], crop="none")
    e2 = g.node("CLIPVisionEncode", clip_vision=cv[0], image=last[0], crop="none")
    g.node("WanFirstLastFrameToVideo", id="flf", positive=pos[0], negative=neg[0], vae=vae[0], width=32, height=32,
           length=9, batch_size=1, clip_vision_start_image=e1[0], clip_vision_end_image=e2[0], start_image=first[0],
           end_image=last[0])
    out = run(g, "flf", tmp_path=tmp_path)["flf"]
    start = upscale_images(images_in["first.png"][:9], 32, 32)
    end = upscale_images(images_in["last.png"][-9:], 32, 32)
    image = torch.ones((9, 32, 32, 3)) * 0.5
    mask = torch.ones((1, 1, 3 * 4, 4, 4))
    image[:start.shape[0]] = start
    mask[:, :, :start.shape[0] + 3] = 0.0
    image[-end.shape[0]:] = end
    mask[:, :, -end.shape[0]:] = 0.0
    concat = vae_encode(models.modules["wan_2.1_vae.safetensors"], image)
    mask = mask.view(1, mask.shape[2] // 4, 4, mask.shape[3], mask.shape[4]).transpose(1, 2)
    ref = concat_cond((1, 16) + tuple(concat.shape[2:]), 20, concat, mask).numpy()
    assert rel_err(_np(out["positive"].extras[CONCAT_LATENTS]), ref) < TOL
    tokens = _np(out["positive"].image_embeds)
    assert tokens.shape[0] == 2 and np.array_equal(tokens, _np(out["negative"].image_embeds))


def test_wan22_image_to_video_latent_equals_comfyui(models, images_in, tmp_path):
    """Wan22ImageToVideoLatent.execute: start frame encoded in front, Wan22.process_out(0) elsewhere, noise_mask."""
    g = GraphBuilder()
    vae = g.node("VAELoader", vae_name="wan2.2_vae.safetensors")
    img = g.node("LoadImage", image="first.png")
    g.node("Wan22ImageToVideoLatent", id="t", vae=vae[0], width=64, height=32, length=9, batch_size=2,
           start_image=img[0])
    g.node("Wan22ImageToVideoLatent", id="e", vae=vae[0], width=64, height=32, length=9, batch_size=1)
    out = run(g, "t", "e", tmp_path=tmp_path)
    latent = torch.zeros([1, 48, 3, 2, 4])
    mask = torch.ones([1, 1, 3, 2, 4])
    start = upscale_images(images_in["first.png"][:9], 64, 32)
    temp = vae_encode(models.modules["wan2.2_vae.safetensors"], start)
    latent[:, :, :temp.shape[-3]] = temp
    mask[:, :, :temp.shape[-3]] *= 0.0
    latent = process_out(latent) * mask + latent * (1.0 - mask)
    got = out["t"]["LATENT"]
    assert rel_err(_np(got["samples"]), latent.repeat(2, 1, 1, 1, 1).numpy()) < TOL
    assert np.array_equal(_np(got["noise_mask"]), mask.repeat(2, 1, 1, 1, 1).numpy())
    assert got["normalized"] is False
    empty = out["e"]["LATENT"]
    assert tuple(empty["samples"].shape) == (1, 48, 3, 2, 4) and "noise_mask" not in empty


def test_wan_vace_to_video_equals_comfyui(models, images_in, tmp_path):
    """WanVaceToVideo.execute (control video padded with grey, soft masks, reference frame in front) and
    WAN21_Vace.extra_conds (frames normalised 16 channels at a time, 64 mask channels appended)."""
    rng = np.random.default_rng(0)
    video = np.stack([tiny_image(40, 56, seed=20 + i) for i in range(5)]).astype(np.float32)
    masks = rng.uniform(0, 1, (5, 40, 56)).astype(np.float32)

    from graphrt import Node, Output, register_node

    @register_node
    class _ComfyTestFrames(Node):       # hands the test's arrays to the graph
        CLASS_NAME = "ComfyTestFrames"
        OUTPUTS = [Output("images", "IMAGE"), Output("mask", "MASK")]

        def execute(self, ctx):
            return video, masks

    g = GraphBuilder()
    pos, neg = _text(g)
    vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
    src = g.node("ComfyTestFrames")
    ref_img = g.node("LoadImage", image="ref.png")
    g.node("WanVaceToVideo", id="v", positive=pos[0], negative=neg[0], vae=vae[0], width=32, height=32, length=9,
           batch_size=1, strength=0.75, control_video=src[0], control_masks=src[1], reference_image=ref_img[0])
    out = run(g, "v", tmp_path=tmp_path)["v"]
    vae_t = models.modules["wan_2.1_vae.safetensors"]
    length, width, height = 9, 32, 32
    cv = upscale_images(video[:length], width, height)
    cv = TF.pad(cv, (0, 0, 0, 0, 0, 0, 0, length - cv.shape[0]), value=0.5)
    ref = upscale_images(images_in["ref.png"][:1], width, height)
    ref = vae_encode(vae_t, ref)
    ref = torch.cat([ref, process_out(torch.zeros_like(ref))], dim=1)
    mask = torch.from_numpy(masks).unsqueeze(1)
    mask = common_upscale(mask[:length], width, height).movedim(1, -1)
    mask = TF.pad(mask, (0, 0, 0, 0, 0, 0, 0, length - mask.shape[0]), value=1.0)
    cv = cv - 0.5
    inactive = vae_encode(vae_t, (cv * (1 - mask)) + 0.5)
    reactive = vae_encode(vae_t, (cv * mask) + 0.5)
    frames = torch.cat([ref, torch.cat((inactive, reactive), dim=1)], dim=2)
    m = mask.view(length, 4, 8, 4, 8).permute(2, 4, 0, 1, 3).reshape(64, length, 4, 4)
    m = TF.interpolate(m.unsqueeze(0), size=(3, 4, 4), mode="nearest-exact").squeeze(0)
    m = torch.cat((torch.zeros_like(m[:, :1]), m), dim=1).unsqueeze(0)
    vf = torch.cat([process_in(frames[:, :16]), process_in(frames[:, 16:32])], dim=1)
    expect = torch.cat([vf, m], dim=1).numpy()
    for cond in (out["positive"], out["negative"]):
        assert rel_err(_np(cond.extras[VACE_CONTROL]), expect) < TOL
        assert cond.extras[VACE_STRENGTH] == 0.75
    assert out["trim_latent"] == 1
    assert tuple(out["latent"]["samples"].shape) == (1, 16, 4, 4, 4)


# ---- latents, VAE, video and image files ----------------------------------------------------------------------

def test_vae_encode_decode_and_latent_nodes(models, images_in, tmp_path):
    """VAEEncode gives the raw posterior mean of the frames cropped to multiples of 8, centred
    (comfy/sd.py vae_encode_crop_pixels); VAEDecode gives frames [B·T, H, W, 3] =
    clamp((decode(z) + 1) / 2, 0, 1) (comfy/sd.py process_output), also from a normalised LATENT."""
    from PIL import Image
    odd = tiny_image(37, 53, seed=5)
    Image.fromarray((odd * 255).round().astype(np.uint8)).save(tmp_path / "input" / "odd.png")
    g = GraphBuilder()
    vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
    img = g.node("LoadImage", image="odd.png")
    enc = g.node("VAEEncode", id="enc", pixels=img[0], vae=vae[0])
    g.node("VAEDecode", id="dec", samples=enc[0], vae=vae[0])
    g.node("VAEDecodeTiled", id="tiled", samples=enc[0], vae=vae[0], tile_size=64, overlap=32, temporal_size=64,
           temporal_overlap=8)
    empty = g.node("EmptyHunyuanLatentVideo", id="empty", width=48, height=32, length=9, batch_size=2)
    g.node("TrimVideoLatent", id="trim", samples=empty[0], trim_amount=1)
    out = run(g, "enc", "dec", "tiled", "empty", "trim", tmp_path=tmp_path)
    vae_t = models.modules["wan_2.1_vae.safetensors"]
    pixels = torch.from_numpy(odd[None, 2:34, 2:50].astype(np.float32))     # 37 -> 32 rows, 53 -> 48 columns
    raw = vae_encode(vae_t, pixels)
    assert rel_err(_np(out["enc"]["LATENT"]["samples"]), raw.numpy()) < TOL
    with torch.no_grad():
        frames = torch.clamp((vae_t.decode(raw).sample + 1.0) / 2.0, 0, 1).movedim(1, -1)
    frames = frames.reshape(-1, *frames.shape[-3:]).numpy()
    assert out["dec"]["IMAGE"].shape == (1, 32, 48, 3)
    assert rel_err(out["dec"]["IMAGE"], frames) < TOL
    assert out["tiled"]["IMAGE"].shape == (1, 32, 48, 3)
    assert tuple(out["empty"]["LATENT"]["samples"].shape) == (2, 16, 3, 4, 6)
    assert tuple(out["trim"]["LATENT"]["samples"].shape) == (2, 16, 2, 4, 6)

    from nodes.comfy.comfy_latent_nodes import decode_frames
    vae_ms = get_node_class("VAELoader")().execute(None, "wan_2.1_vae.safetensors")[0]
    normalized = {"samples": ms.Tensor(process_in(raw).numpy()), "normalized": True}
    assert rel_err(decode_frames(vae_ms, normalized), frames) < TOL


def test_video_nodes_write_and_read_a_playable_mp4(tmp_path):
    """CreateVideo -> SaveVideo writes an H.264 MP4; LoadVideo -> GetVideoComponents reads it back; the
    animated WebP and PNG writers produce one frame per image."""
    from nodes.wan import media
    from PIL import Image
    load_node_packs()
    frames = np.stack([tiny_image(32, 48, seed=i) for i in range(9)]).astype(np.float32)

    from graphrt import Node, Output, register_node

    @register_node
    class _ComfyTestVideo(Node):
        CLASS_NAME = "ComfyTestVideo"
        OUTPUTS = [Output("images", "IMAGE")]

        def execute(self, ctx):
            return (frames,)

    g = GraphBuilder()
    src = g.node("ComfyTestVideo")
    video = g.node("CreateVideo", images=src[0], fps=12.0)
    g.node("SaveVideo", id="save", video=video[0], filename_prefix="video/test", format="auto", codec="auto")
    g.node("SaveAnimatedWEBP", id="webp", images=src[0], filename_prefix="anim", fps=6.0, lossless=False,
           quality=80, method="fastest")
    g.node("SaveImage", id="png", images=src[0], filename_prefix="stills/f")
    res = Executor(output_dir=str(tmp_path / "out")).run(g.to_workflow())
    mp4 = res.ui["save"]["files"][0]
    info = media.probe_video(mp4)
    assert (info["frames"], info["width"], info["height"]) == (9, 48, 32) and abs(info["fps"] - 12.0) < 1e-6
    with Image.open(res.ui["webp"]["files"][0]) as im:
        assert im.n_frames == 9
    assert len(res.ui["png"]["files"]) == 9

    set_input_dir(tmp_path / "out" / "video")
    try:
        g = GraphBuilder()
        v = g.node("LoadVideo", file="test_00001.mp4")
        g.node("GetVideoComponents", id="parts", video=v[0])
        parts = run(g, "parts", tmp_path=tmp_path)["parts"]
    finally:
        set_input_dir(None)
    assert parts["images"].shape == (9, 32, 48, 3) and parts["fps"] == 12.0 and parts["audio"] is None
    assert np.abs(parts["images"] - frames).mean() < 0.05          # H.264 is lossy


def test_load_image_gives_image_and_mask_and_reports_missing_files(tmp_path):
    """nodes.py LoadImage: IMAGE RGB, MASK = 1 - alpha ([1, 64, 64] zeros without alpha); a file of the input
    folder by name, or a path."""
    from PIL import Image
    load_node_packs()
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    rgba = np.zeros((6, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(10, dtype=np.uint8)[None] * 25
    Image.fromarray(rgba, "RGBA").save(input_dir / "alpha.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "plain.png")
    set_input_dir(input_dir)
    try:
        g = GraphBuilder()
        g.node("LoadImage", id="a", image="alpha.png")
        g.node("LoadImage", id="p", image=str(tmp_path / "plain.png"))
        out = run(g, "a", "p", tmp_path=tmp_path)
        g = GraphBuilder()
        g.node("LoadImage", id="m", image="nope.png")
        errors = validate(g.to_workflow())
    finally:
        set_input_dir(None)
    assert out["a"]["IMAGE"].shape == (1, 6, 10, 3) and np.allclose(out["a"]["IMAGE"][..., 0], 200 / 255)
    assert np.allclose(out["a"]["MASK"][0], 1.0 - rgba[..., 3] / 255.0)
    assert out["p"]["MASK"].shape == (1, 64, 64) and not out["p"]["MASK"].any()
    assert len(errors) == 1 and errors[0].input == "image"
    assert str(input_dir) in errors[0].message and "alpha.png" in errors[0].message


def test_image_nodes_follow_comfyui(tmp_path):
    """ImageFromBatch / GetImageSize / BatchImagesNode (batch_images: resized to the first, bilinear centre
    crop) / ResizeImageMaskNode (nodes_post_processing.py scale_dimensions, scale_longer_dimension)."""
    from nodes.comfy.comfy_image_nodes import ResizeImageMaskNode, batch_images
    load_node_packs()
    a = np.stack([tiny_image(20, 30, seed=i) for i in range(3)]).astype(np.float32)
    b = tiny_image(16, 16, seed=9)[None].astype(np.float32)
    got = batch_images([a, b])
    ref = torch.cat([torch.from_numpy(a), upscale_images(b, 30, 20)]).numpy()
    assert got.shape == (4, 20, 30, 3) and rel_err(got, ref) < 1e-6
    node = ResizeImageMaskNode()
    out = node.execute(None, a, "scale dimensions", "bilinear", **{"resize_type.width": 16, "resize_type.height": 12,
                                                                   "resize_type.crop": "center"})[0]
    ref = common_upscale(torch.from_numpy(a).movedim(-1, 1), 16, 12, "bilinear", "center").movedim(1, -1).numpy()
    assert rel_err(out, ref) < 1e-6
    mask = np.random.default_rng(1).uniform(size=(2, 20, 30)).astype(np.float32)
    out = node.execute(None, mask, "scale longer dimension", "nearest-exact", **{"resize_type.longer_size": 15})[0]
    ref = TF.interpolate(torch.from_numpy(mask).unsqueeze(1), size=(10, 15), mode="nearest-exact").squeeze(1).numpy()
    assert np.array_equal(out, ref)
    assert ResizeImageMaskNode.ui_widget_names(["scale longer dimension", 2048, "lanczos"]) == \
        ["resize_type", "resize_type.longer_size", "scale_method"]
    assert get_node_class("ImageFromBatch")().execute(None, a, 1, 5)[0].shape == (2, 20, 30, 3)
    assert get_node_class("GetImageSize")().execute(None, a) == (30, 20, 3)


def test_primitives_switch_and_math_expression_in_a_ui_file(tmp_path):
    """A UI-format graph as the Wan2.2 templates build it: PrimitiveInt with its control_after_generate value,
    a PrimitiveBoolean driving ComfySwitchNode (only the chosen branch runs), ComfyMathExpression
    floor(a * b) + 1 of two PrimitiveFloats."""
    load_node_packs()
    ui = {"last_node_id": 7, "last_link_id": 6, "version": 0.4, "nodes": [
        {"id": 1, "type": "PrimitiveInt", "mode": 0, "widgets_values": [20, "fixed"],
         "outputs": [{"name": "INT", "type": "INT", "links": [1]}]},
        {"id": 2, "type": "PrimitiveInt", "mode": 0, "widgets_values": [4, "fixed"],
         "outputs": [{"name": "INT", "type": "INT", "links": [2]}]},
        {"id": 3, "type": "PrimitiveBoolean", "mode": 0, "widgets_values": [False],
         "outputs": [{"name": "BOOLEAN", "type": "BOOLEAN", "links": [3]}]},
        {"id": 4, "type": "ComfySwitchNode", "mode": 0, "widgets_values": [True],
         "inputs": [{"name": "on_false", "type": "INT", "link": 1}, {"name": "on_true", "type": "INT", "link": 2},
                    {"name": "switch", "type": "BOOLEAN", "link": 3, "widget": {"name": "switch"}}],
         "outputs": [{"name": "output", "type": "INT", "links": []}]},
        {"id": 5, "type": "PrimitiveFloat", "mode": 0, "widgets_values": [5],
         "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [4]}]},
        {"id": 6, "type": "PrimitiveFloat", "mode": 0, "widgets_values": [16],
         "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [5]}]},
        {"id": 7, "type": "ComfyMathExpression", "mode": 0, "widgets_values": ["floor(a * b) + 1"],
         "inputs": [{"name": "values.a", "type": "FLOAT,INT", "link": 4},
                    {"name": "values.b", "type": "FLOAT,INT", "link": 5},
                    {"name": "values.c", "type": "FLOAT,INT", "link": None}],
         "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": []}, {"name": "INT", "type": "INT", "links": []}]}],
        "links": [[1, 1, 0, 4, 0, "INT"], [2, 2, 0, 4, 1, "INT"], [3, 3, 0, 4, 2, "BOOLEAN"],
                  [4, 5, 0, 7, 0, "FLOAT"], [5, 6, 0, 7, 1, "FLOAT"]]}
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui))
    wf = Workflow.load(path)
    assert wf.nodes["1"]["inputs"] == {"value": 20}
    res = Executor(output_dir=str(tmp_path)).run(wf, targets=["4", "7"])
    assert res.outputs["4"]["output"] == 20
    assert res.report["2"].status != "executed"          # the branch not chosen never ran
    assert res.outputs["7"]["FLOAT"] == 81.0 and res.outputs["7"]["INT"] == 81
    from nodes.comfy.math_expression import evaluate
    assert evaluate("max(values) - round(a / 3)", {"a": 7, "values": [7, 9]}) == 7
    with pytest.raises(ValueError, match="Attribute"):
        evaluate("a.__class__", {"a": 1})


def test_lora_loaders_patch_the_model_as_comfyui(models, tmp_path):
    """LoraLoaderModelOnly / LoraLoader: W + strength · (alpha / rank) · up @ down (comfy/lora.py); the
    LoRA's CLIP part is empty, so the CLIP passes through."""
    name = "Wan21_CausVid_14B_T2V_lora_rank32.safetensors"
    g = GraphBuilder()
    unet = g.node("UNETLoader", id="base", unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    clip = g.node("CLIPLoader", id="clip", clip_name="umt5_xxl_fp16.safetensors", type="wan")
    g.node("LoraLoaderModelOnly", id="only", model=unet[0], lora_name=name, strength_model=0.7)
    g.node("LoraLoader", id="both", model=unet[0], clip=clip[0], lora_name=name, strength_model=0.7,
           strength_clip=1.0)
    out = run(g, "base", "clip", "only", "both", tmp_path=tmp_path)
    assert out["both"]["CLIP"] is out["clip"]["CLIP"]
    import copy
    ref = copy.deepcopy(models.modules["wan2.1_t2v_1.3B_fp16.safetensors"])   # the shared module stays as is
    merged = ref.state_dict()
    diffusers_name = {"blocks.0.self_attn.q": "blocks.0.attn1.to_q.weight",
                      "blocks.1.ffn.0": "blocks.1.ffn.net.0.proj.weight"}
    for module, (down, up, alpha) in models.modules[name].items():
        merged[diffusers_name[module]] += 0.7 * (alpha / down.shape[0]) * (up @ down)
    ref.load_state_dict(merged)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 2, 4, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 512, 32)).astype(np.float32)
    with torch.no_grad():
        expect = ref(torch.from_numpy(x), torch.tensor([500]), torch.from_numpy(ctx), return_dict=False)[0].numpy()
    for nid in ("only", "both"):
        model = out[nid]["MODEL"]
        got = model.transformer(ms.Tensor(x), ms.Tensor(np.array([500], np.int64)), ms.Tensor(ctx)).asnumpy()
        assert rel_err(got, expect) < TOL
