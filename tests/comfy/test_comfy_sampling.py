"""ComfyUI's sampling nodes on our transformer (nodes/comfy/comfy_sampler_nodes.py, the bridge
nodes/wan/pipelines/comfy_sampling.py) against a replay of ComfyUI's algorithm in torch with
diffusers' transformer on the same tiny weights and the same torch.manual_seed noise.

The replay (tests/comfy/comfy_replay.py) is written from ComfyUI's source (comfy/samplers.py KSampler /
CFGGuider / KSAMPLER, comfy/model_sampling.py CONST + ModelSamplingDiscreteFlow, comfy/extra_samplers/uni_pc.py,
comfy/k_diffusion/sampling.py sample_euler, comfy/latent_formats.py Wan21): it shares no code with the
implementation. The graphs are ComfyUI's: UNETLoader, CLIPLoader, CLIPTextEncode,
EmptyHunyuanLatentVideo on tiny files in ComfyUI's formats in a temporary models folder.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mindspore as ms

from graphrt import Executor, GraphBuilder, Interrupted, validate
from nodes.wan.models.denoiser import WanDenoiser
from nodes.wan.pipelines import comfy_sampling as C
from nodes.wan.pipelines.conditioning import CONCAT_LATENTS, FIRST_FRAME_LATENTS, FIRST_FRAME_MASK, WanConditioning
from nodes.wan.pipelines.vace_conditioning import VACE_CONTROL, VACE_STRENGTH
from tests.comfy.comfy_replay import comfy_noise, comfy_sigmas, euler, replay, torch_model   # ComfyUI in torch
from tests.wan.parity import rel_err

ms.set_device("CPU")

BASE = dict(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, eps=1e-6,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
SHIFT, CFG, STEPS = 5.0, 6.0, 4
WIDTH, HEIGHT, FRAMES = 48, 32, 9          # latent [1, 16, 3, 4, 6]
SEED = 2**63 + 12345                         # above int64: ComfyUI takes seeds up to 2**64 - 1


def _reference(seed, **changes):
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
    torch.manual_seed(seed)
    cls = WanVACETransformer3DModel if "vace_layers" in changes else WanTransformer3DModel
    ref = cls(**{**BASE, **changes}).eval()
    with torch.no_grad():       # diffusers zero-inits some tensors; perturb all so every path matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref


def _write_comfy_file(ref, path):
    """The transformer as a ComfyUI single file (float32)."""
    from safetensors.torch import save_file
    from nodes.wan.checkpoints.original_format import original_key
    save_file({"model.diffusion_model." + original_key(k): v.detach().contiguous()
               for k, v in ref.state_dict().items()}, str(path))


def _load_denoiser(ref, folder):
    """Written as a ComfyUI file and read back by the library loader, with the config a hidden size no
    released model has needs: heads 128 wide, as ComfyUI (and UNETLoader) assume for every Wan file."""
    import json
    from nodes.wan import load_transformer
    _write_comfy_file(ref, folder / "m.safetensors")
    vace = {"vace_layers": ref.config.vace_layers} if "vace_layers" in ref.config else {}
    (folder / "m.json").write_text(json.dumps({"attention_head_dim": 128, **vace}))
    transformer = load_transformer(folder / "m.safetensors", config=folder / "m.json")
    return C.with_model_sampling(WanDenoiser(transformer=transformer), SHIFT)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from graphrt.registry import load_node_packs
    from nodes.wan.checkpoints import model_folders
    from tests.comfy.tiny_comfy_files import build_text_encoder, train_spiece, write_text_encoder
    load_node_packs()
    root = tmp_path_factory.mktemp("comfy_sampling")
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders"):
        (models / sub).mkdir(parents=True)
    spiece = train_spiece()
    write_text_encoder(build_text_encoder(spiece), spiece, models / "text_encoders" / "umt5_xxl_fp16.safetensors")
    refs = []
    for i in range(2):                               # two experts (Wan2.2 A14B style); expert 0 alone is T2V
        refs.append(_reference(i))
        _write_comfy_file(refs[-1], models / "diffusion_models" / f"expert{i}.safetensors")
    model_folders.set_models_dir(models)
    yield dict(root=root, refs=refs, ex=Executor(cache="lru:64", output_dir=root / "out"))
    model_folders.set_models_dir(None)


# ---- the graph ---------------------------------------------------------------------------------------

def base_graph(world, expert=0):
    g = GraphBuilder()
    model = g.node("UNETLoader", id="model", unet_name=f"expert{expert}.safetensors", weight_dtype="default")
    clip = g.node("CLIPLoader", clip_name="umt5_xxl_fp16.safetensors", type="wan", device="default")
    pos = g.node("CLIPTextEncode", id="pos", clip=clip[0], text="a fox in the snow")
    neg = g.node("CLIPTextEncode", id="neg", clip=clip[0], text="")
    patched = g.node("ModelSamplingSD3", id="ms3", model=model[0], shift=SHIFT)
    lat = g.node("EmptyHunyuanLatentVideo", width=WIDTH, height=HEIGHT, length=FRAMES, batch_size=1)
    return g, patched, pos, neg, lat


def run(world, g, targets):
    res = world["ex"].run(g.to_workflow(), targets=targets)
    return {k: v for k, v in res.outputs.items()}


def embeds(out):
    return [torch.from_numpy(out[k]["CONDITIONING"].embeds.asnumpy()) for k in ("pos", "neg")]


def latent_of(out, node):
    lat = next(iter(out[node].values()))
    assert lat["normalized"] is False          # ComfyUI's raw VAE-space LATENT
    return lat["samples"].asnumpy()


# ---- (1) the model function --------------------------------------------------------------------------

CASES = {
    "t2v": {},
    "i2v": dict(in_channels=36, image_dim=24, added_kv_proj_dim=128),
    "ti2v": dict(in_channels=48, out_channels=48),
    "vace": dict(num_layers=4, vace_layers=[0, 2], vace_in_channels=12),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_denoised_equals_diffusers_converted_the_same_way(tmp_path, kind):
    """WanFlowModel(x, sigma) = CFG of x - v*sigma with v from diffusers at t = sigma*1000; Wan2.2 TI2V
    under a noise mask gets per-frame timesteps (0 on the known frame) over each frame's tokens; I2V
    concat channels and CLIP tokens, and VACE control with its strength, reach the transformer."""
    ref = _reference(3, **CASES[kind])
    den = _load_denoiser(ref, tmp_path)
    rng = np.random.default_rng(0)
    z = 48 if kind == "ti2v" else 16
    x = rng.standard_normal((1, z, 3, 4, 6)).astype(np.float32)
    pe, ne = (rng.standard_normal((1, 512, 32)).astype(np.float32) for _ in range(2))
    extras, img, mask, control = {}, None, None, {}
    if kind == "vace":
        hint = rng.standard_normal((1, 12, 3, 4, 6)).astype(np.float32)
        extras = {VACE_CONTROL: ms.Tensor(hint), VACE_STRENGTH: 0.7}
        control = dict(control_hidden_states=torch.from_numpy(hint),
                       control_hidden_states_scale=torch.tensor([0.7] * 2))
    if kind == "i2v":
        extras = {CONCAT_LATENTS: ms.Tensor(rng.standard_normal((1, 20, 3, 4, 6)).astype(np.float32))}
        img = rng.standard_normal((1, 5, 24)).astype(np.float32)
    if kind == "ti2v":
        mask = np.ones((1, z, 3, 4, 6), np.float32)
        mask[:, :, 0] = 0.0
    pos = WanConditioning(ms.Tensor(pe), None if img is None else ms.Tensor(img), extras)
    neg = WanConditioning(ms.Tensor(ne), None if img is None else ms.Tensor(img), extras)
    for cfg, sigma in ((CFG, np.float32(0.93)), (CFG, np.float32(0.2)), (1.0, np.float32(0.5))):
        model = C.WanFlowModel(den, pos, neg, cfg, latent_channels=z, denoise_mask=mask)
        ours = model(x, sigma)
        t = torch.tensor([sigma * np.float32(1000)])
        if mask is not None:     # one timestep per token: 2x3 tokens per latent frame, frame 0 known
            t = torch.tensor(np.repeat(mask[:, 0, :, 0, 0] * (sigma * np.float32(1000)), 6, axis=1))
        xin = torch.from_numpy(x)
        if kind == "i2v":
            xin = torch.cat([xin, torch.from_numpy(extras[CONCAT_LATENTS].asnumpy())], dim=1)
        image = None if img is None else torch.from_numpy(img)
        with torch.no_grad():
            d = [x - ref(xin, t, torch.from_numpy(e), image, return_dict=False, **control)[0].numpy() * sigma
                 for e in (pe, ne)]
        expect = d[0] * np.float32(cfg) if cfg == 1.0 else d[1] + (d[0] - d[1]) * np.float32(cfg)
        assert rel_err(ours, expect) < 1e-5, (kind, cfg, sigma)


def test_ti2v_start_frame_as_comfys_noise_mask(tmp_path):
    """Wan2.2 TI2V from a start frame, as ComfyUI's Wan22ImageToVideoLatent hands it to KSampler: a raw
    latent holding the frame (other frames process_out(0)) plus a noise_mask 0 on it. KSamplerX0Inpaint
    keeps the known frame clean before and after each model call, and the frame gets timestep 0. Our
    conditioning's FIRST_FRAME_* extras on an empty latent give the same run."""
    from nodes.wan.checkpoints.presets import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    ref = _reference(4, in_channels=48, out_channels=48)
    den = _load_denoiser(ref, tmp_path)
    rng = np.random.default_rng(1)
    shape = (1, 48, 3, 4, 6)
    pe, ne = (rng.standard_normal((1, 512, 32)).astype(np.float32) for _ in range(2))
    mean = torch.tensor(WAN22_LATENTS_MEAN).view(1, 48, 1, 1, 1)
    std = torch.tensor(WAN22_LATENTS_STD).view(1, 48, 1, 1, 1)
    frame = torch.from_numpy(rng.standard_normal((1, 48, 1, 4, 6)).astype(np.float32))   # raw VAE latent
    mask = torch.ones((1, 1, 3, 4, 6))
    mask[:, :, 0] = 0
    raw = mean.expand(shape).clone()
    raw[:, :, :1] = frame
    latent = {"samples": ms.Tensor(raw.numpy()), "noise_mask": ms.Tensor(mask.numpy()), "normalized": False}
    pos, neg = WanConditioning(ms.Tensor(pe)), WanConditioning(ms.Tensor(ne))
    steps, seed = 3, 5
    ours = C.ksampler(den, latent, seed=seed, steps=steps, cfg=CFG, sampler_name="euler", scheduler="simple",
                      positive=pos, negative=neg)
    assert ours["normalized"] is False and "noise_mask" in ours

    m = mask.expand(shape)
    clean = (raw - mean) * 1.0 / std

    def model(x, sigma):          # KSamplerX0Inpaint around BaseModel + WAN22.process_timestep
        x = x * m + clean * (1.0 - m)
        t = (mask.mean(dim=(1, 3, 4)) * sigma * 1000).repeat_interleave(6, dim=1)
        with torch.no_grad():
            d = [x - ref(x, t, torch.from_numpy(e), return_dict=False)[0] * sigma for e in (pe, ne)]
        return (d[1] + (d[0] - d[1]) * CFG) * m + clean * (1.0 - m)

    sigmas = comfy_sigmas(steps, "euler", shift=SHIFT)
    x = sigmas[0] * comfy_noise(seed, shape) + (1.0 - sigmas[0]) * clean
    expect = euler(model, x, sigmas) * std / 1.0 + mean
    assert rel_err(ours["samples"].asnumpy(), expect.numpy()) < 1e-4
    np.testing.assert_allclose(ours["samples"].asnumpy()[:, :, :1], frame.numpy(), rtol=1e-6, atol=1e-6)

    first = {FIRST_FRAME_LATENTS: ms.Tensor(clean[:, :, :1].numpy()), FIRST_FRAME_MASK: ms.Tensor(mask.numpy())}
    ours2 = C.ksampler(den, {"samples": ms.Tensor(np.zeros((1, 16, 3, 4, 6), np.float32)), "normalized": True},
                       seed=seed, steps=steps, cfg=CFG, sampler_name="euler", scheduler="simple",
                       positive=WanConditioning(ms.Tensor(pe), extras=first),
                       negative=WanConditioning(ms.Tensor(ne), extras=first))
    np.testing.assert_array_equal(ours2["samples"].asnumpy(), ours["samples"].asnumpy())


@pytest.mark.parametrize("src, dst", [((1, 1, 9, 32, 48), (1, 16, 3, 4, 6)), ((9, 32, 48), (2, 48, 3, 4, 6)),
                                      ((1, 1, 3, 4, 6), (1, 48, 3, 4, 6))])
def test_noise_mask_is_resized_as_comfys_reshape_mask(src, dst):
    """comfy.utils.reshape_mask: trilinear to the latent's (T, h, w), then channels and batch repeated."""
    m = np.random.default_rng(0).random(src).astype(np.float32)
    t = torch.from_numpy(m).reshape((1, 1, -1) + src[-2:]) if len(src) < 5 else torch.from_numpy(m)
    ref = torch.nn.functional.interpolate(t, size=dst[2:], mode="trilinear")
    ref = ref.repeat((1, dst[1], 1, 1, 1))[:, :dst[1]].repeat((dst[0], 1, 1, 1, 1)).numpy()
    np.testing.assert_allclose(C.prepare_mask(m, dst), ref, rtol=0, atol=1e-6)


def test_without_model_sampling_sd3_the_shift_is_comfys_wan_default():
    den = WanDenoiser(transformer=object(), scheduler_config={"flow_shift": 3.0})
    assert C.model_sampling(den).shift == 8.0
    assert C.model_sampling(C.with_model_sampling(den, 5.0)).shift == 5.0


# ---- (2) whole KSampler runs -------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "uni_pc"])
def test_ksampler_runs_equal_comfys_algorithm(world, sampler):
    """text-to-video at denoise 1, then that result re-sampled at denoise 0.6 (raw latent in: the
    process_in / process_out round trip), seed above 2**63; final latents within 1e-4."""
    g, model, pos, neg, lat = base_graph(world)
    common = dict(model=model[0], steps=STEPS, cfg=CFG, sampler_name=sampler, scheduler="simple",
                  positive=pos[0], negative=neg[0])
    first = g.node("KSampler", id="first", seed=SEED, latent_image=lat[0], denoise=1.0, **common)
    g.node("KSampler", id="second", seed=7, latent_image=first[0], denoise=0.6, **common)
    out = run(world, g, ["pos", "neg", "first", "second"])

    pe, ne = embeds(out)
    model_fn = torch_model(world["refs"][0], pe, ne, CFG)
    shape = (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    a = replay(model_fn, sampler, comfy_sigmas(STEPS, sampler, shift=SHIFT), comfy_noise(SEED, shape),
               torch.zeros(shape))
    b = replay(model_fn, sampler, comfy_sigmas(STEPS, sampler, 0.6, SHIFT), comfy_noise(7, shape), a)
    assert rel_err(latent_of(out, "first"), a.numpy()) < 1e-4
    assert rel_err(latent_of(out, "second"), b.numpy()) < 1e-4


# ---- (3) KSamplerAdvanced ----------------------------------------------------------------------------

def advanced(g, model, pos, neg, latent, add_noise, start, end, leftover, sampler, steps=STEPS, seed=3):
    return g.node("KSamplerAdvanced", model=model, add_noise=add_noise, noise_seed=seed, steps=steps, cfg=CFG,
                  sampler_name=sampler, scheduler="simple", positive=pos, negative=neg, latent_image=latent,
                  start_at_step=start, end_at_step=end, return_with_leftover_noise=leftover)


@pytest.mark.parametrize("sampler, equal", [("euler", True), ("uni_pc", False)])
def test_split_with_leftover_noise_versus_one_run(world, sampler, equal):
    """0→K with leftover noise, then K→end without new noise. ComfyUI hands over x_K / (1 − σ_K) in
    VAE space and restarts from (1 − σ_K)·that with zero noise: for euler (one model call per step, no
    history) this is the single run up to float rounding; uni_pc restarts its multistep history (and
    order) at K, so the split is a different, equally valid, trajectory."""
    g, model, pos, neg, lat = base_graph(world)
    single = g.node("KSampler", seed=3, steps=STEPS, cfg=CFG, sampler_name=sampler, scheduler="simple",
                    model=model[0], positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    a = advanced(g, model[0], pos[0], neg[0], lat[0], "enable", 0, 2, "enable", sampler)
    b = advanced(g, model[0], pos[0], neg[0], a[0], "disable", 2, 10000, "disable", sampler)
    out = run(world, g, [single.id, b.id])
    err = rel_err(latent_of(out, b.id), latent_of(out, single.id))
    assert (err < 2e-5) if equal else (err > 1e-3), err


def test_wan22_two_experts_chain_as_comfy(world):
    """The Wan2.2 A14B template: high-noise expert 0→K with leftover noise, low-noise expert K→end
    without new noise, each its own MODEL with the same shift, steps and scheduler."""
    g, high, pos, neg, lat = base_graph(world, expert=0)
    low_file = g.node("UNETLoader", unet_name="expert1.safetensors", weight_dtype="default")
    low = g.node("ModelSamplingSD3", model=low_file[0], shift=SHIFT)
    steps, k = 4, 2
    a = advanced(g, high[0], pos[0], neg[0], lat[0], "enable", 0, k, "enable", "euler", steps, SEED)
    b = advanced(g, low[0], pos[0], neg[0], a[0], "disable", k, 10000, "disable", "euler", steps, SEED)
    out = run(world, g, ["pos", "neg", a.id, b.id])

    pe, ne = embeds(out)
    shape = (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    sigmas = comfy_sigmas(steps, "euler", shift=SHIFT)
    stage1 = replay(torch_model(world["refs"][0], pe, ne, CFG), "euler", sigmas[:k + 1].clone(),
                    comfy_noise(SEED, shape), torch.zeros(shape))
    stage2 = replay(torch_model(world["refs"][1], pe, ne, CFG), "euler", sigmas[k:].clone(),
                    torch.zeros(shape), stage1)
    assert rel_err(latent_of(out, a.id), stage1.numpy()) < 1e-4
    assert rel_err(latent_of(out, b.id), stage2.numpy()) < 1e-4


def test_start_past_the_end_hands_the_latent_back(world):
    g, model, pos, neg, lat = base_graph(world)
    first = g.node("KSampler", seed=1, steps=2, cfg=CFG, sampler_name="euler", scheduler="simple",
                   model=model[0], positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    again = advanced(g, model[0], pos[0], neg[0], first[0], "enable", 4, 10000, "disable", "euler")
    out = run(world, g, [first.id, again.id])
    assert np.array_equal(latent_of(out, again.id), latent_of(out, first.id))


# ---- SamplerCustom, BasicScheduler, KSamplerSelect -----------------------------------------------------

def test_sampler_custom_with_basic_scheduler_equals_ksampler(world):
    """euler drops no sigma, so BasicScheduler's sigmas are KSampler's, and SamplerCustom is KSampler."""
    g, model, pos, neg, lat = base_graph(world)
    ks = g.node("KSampler", seed=3, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple",
                model=model[0], positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    sigmas = g.node("BasicScheduler", id="sigmas", model=model[0], scheduler="simple", steps=STEPS, denoise=1.0)
    sampler = g.node("KSamplerSelect", sampler_name="euler")
    custom = g.node("SamplerCustom", model=model[0], add_noise=True, noise_seed=3, cfg=CFG, positive=pos[0],
                    negative=neg[0], sampler=sampler[0], sigmas=sigmas[0], latent_image=lat[0])
    out = run(world, g, [ks.id, custom.id, "sigmas"])
    np.testing.assert_array_equal(out["sigmas"]["SIGMAS"], comfy_sigmas(STEPS, "euler", shift=SHIFT).numpy())
    assert np.array_equal(out[custom.id]["output"]["samples"].asnumpy(), latent_of(out, ks.id))
    # denoised_output: the last step's x0, which for euler's final step to sigma 0 is the output itself
    assert rel_err(out[custom.id]["denoised_output"]["samples"].asnumpy(), latent_of(out, ks.id)) < 1e-6


# ---- (4) seeds, schema, UI import, interrupts ----------------------------------------------------------

def test_seeds_up_to_2_64_minus_1_validate_and_draw_torchs_noise(world):
    g, model, pos, neg, lat = base_graph(world)
    ks = g.node("KSampler", seed=2**64 - 1, steps=1, cfg=CFG, sampler_name="euler", scheduler="simple",
                model=model[0], positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    assert validate(g.to_workflow()) == []
    ks.set(seed=2**64)
    assert any("seed" in str(e) for e in validate(g.to_workflow()))
    for seed in (2**63, 2**64 - 1):
        noise = C.initial_noise(np.zeros((1, 16, 3, 4, 6), np.float32), seed, True)
        np.testing.assert_array_equal(noise, comfy_noise(seed, (1, 16, 3, 4, 6)).numpy())


def test_schemas_follow_comfy(world):
    from graphrt.registry import get_node_class
    ks = get_node_class("KSampler")
    assert [i.name for i in ks.INPUTS] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                           "negative", "latent_image", "denoise"]
    assert {i.name: i.default for i in ks.INPUTS if i.is_value} == {
        "seed": 0, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}
    assert ks.input_map()["seed"].max == 0xffffffffffffffff
    adv = get_node_class("KSamplerAdvanced").input_map()
    assert adv["add_noise"].type == ["enable", "disable"]
    assert adv["return_with_leftover_noise"].type == ["disable", "enable"]
    assert (adv["start_at_step"].default, adv["end_at_step"].default) == (0, 10000)
    assert [o.type for o in get_node_class("SamplerCustom").OUTPUTS] == ["LATENT", "LATENT"]
    assert [o.type for o in get_node_class("KSamplerSelect").OUTPUTS] == ["SAMPLER"]
    assert [o.type for o in get_node_class("BasicScheduler").OUTPUTS] == ["SIGMAS"]
    assert get_node_class("ModelSamplingSD3").input_map()["shift"].default == 3.0
    for name in ("uni_pc", "uni_pc_bh2", "euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde",
                 "res_multistep", "lcm", "ddim"):
        assert name in ks.input_map()["sampler_name"].type


def test_ui_widgets_with_control_after_generate_import_in_comfys_order(world):
    from graphrt.ui_format import ui_to_api
    ui = {"nodes": [{"id": 3, "type": "KSampler", "mode": 0, "inputs": [], "outputs": [],
                     "widgets_values": [82628696717253, "randomize", 30, 6, "uni_pc", "simple", 1]},
                    {"id": 4, "type": "KSamplerAdvanced", "mode": 0, "inputs": [], "outputs": [],
                     "widgets_values": ["enable", 2**64 - 1, "fixed", 20, 3.5, "euler", "simple", 0, 10,
                                        "enable"]}],
          "links": []}
    api = ui_to_api(ui)
    assert api["3"]["inputs"] == dict(seed=82628696717253, steps=30, cfg=6, sampler_name="uni_pc",
                                      scheduler="simple", denoise=1)
    assert api["4"]["inputs"] == dict(add_noise="enable", noise_seed=2**64 - 1, steps=20, cfg=3.5,
                                      sampler_name="euler", scheduler="simple", start_at_step=0, end_at_step=10,
                                      return_with_leftover_noise="enable")


def test_progress_per_step_and_interrupt(world):
    g, model, pos, neg, lat = base_graph(world)
    ks = g.node("KSampler", seed=11, steps=3, cfg=CFG, sampler_name="euler", scheduler="simple",
                model=model[0], positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    ex = world["ex"]
    seen = []

    def on_event(event):
        if getattr(event, "type", None) == "progress" and event.class_type == "KSampler":
            seen.append(event)
            ex.interrupt()
    stop = ex.subscribe(on_event)
    try:
        with pytest.raises(Interrupted):
            ex.run(g.to_workflow(), targets=[ks.id])
    finally:
        stop()
    assert len(seen) == 1


def test_a_watched_ksampler_sends_a_latent_preview_per_step(world):
    # The server subscribes with previews=True; each step's denoised estimate becomes a picture
    # through ComfyUI's Wan2.1 latent2rgb factors (nodes/wan/pipelines/latent_preview.py).
    from nodes.wan.pipelines.latent_preview import latent_preview
    g, model, pos, neg, lat = base_graph(world)
    ks = g.node("KSampler", seed=12, steps=2, cfg=CFG, sampler_name="euler", scheduler="simple",
                model=model[0], positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    ex = world["ex"]
    pictures = []
    stop = ex.subscribe(lambda e: pictures.append(e.data["image"]) if e.type == "preview" else None, previews=True)
    try:
        ex.run(g.to_workflow(), targets=[ks.id])
    finally:
        stop()
    assert len(pictures) == 2
    assert all(p.shape == (HEIGHT // 8, WIDTH // 8, 3) and 0 <= p.min() and p.max() <= 1 for p in pictures)
    one_hot = np.zeros((16, 1, 2, 2), np.float32)
    one_hot[14] = 1.0                    # channel 14's row (0.3477, 0.2275, 0.2950) plus the bias
    want = (np.array([0.3477 - 0.1835, 0.2275 - 0.0868, 0.2950 - 0.3360], np.float32) + 1) / 2
    np.testing.assert_allclose(latent_preview(one_hot)[0, 0], want, rtol=1e-6)
    assert latent_preview(np.zeros((4, 1, 2, 2))) is None       # a toy latent space: no preview, no error
