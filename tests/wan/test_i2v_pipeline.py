"""Image-to-video end to end: our graph on tiny diffusers WanImageToVideoPipelines' files
against `WanImageToVideoPipeline(..., latents=noise)`: Wan2.1 I2V (CLIP, CFG), FLF2V (end image,
CLIP position embedding), Wan2.2 I2V A14B (two experts, no CLIP) and TI2V-5B (per-token
timesteps, Wan2.2 VAE) with an image and, as `WanPipeline(expand_timesteps=True)`, text only.

Tolerances (max |ours − diffusers| / max |diffusers|, fp32): frames (`output_type="np"`) 5e-4,
final latents (WanDenoise's LATENT vs `output_type="latent"`) 1e-4."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphrt import Executor, GraphBuilder, Workflow
from graphrt.registry import load_node_packs
from tests.wan.parity import rel_err
from tests.wan.reference import build_tiny_wan_i2v_pipeline, load_image_node, reference_outputs

from nodes.wan.pipelines.noise import make_noise

ROOT = Path(__file__).resolve().parents[2]
PROMPT, NEGATIVE = "a red fox running in the snow", "blurry, static"
FRAMES_TOL, LATENT_TOL = 5e-4, 1e-4
STEPS = 3
SIZES = {"wan21": (32, 48, 9), "flf2v": (32, 48, 9), "wan22": (32, 48, 9), "ti2v": (32, 64, 9)}


def _save_image(path: Path, seed: int, size=(40, 56)) -> Path:
    """A smooth random picture of another size than the video's, so the Lanczos resize matters."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size[1], size[0]), Image.BICUBIC)
    noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 21, (size[0], size[1], 3)), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return _save_image(folder / "start.png", 1), _save_image(folder / "end.png", 2)


def _build(tmp_path_factory, kind):
    load_node_packs()
    folder = tmp_path_factory.mktemp(kind) / "pipe"
    shift = 5.0 if kind == "ti2v" else 3.0
    return folder, build_tiny_wan_i2v_pipeline(folder, kind=kind, shift=shift)


@pytest.fixture(scope="module")
def wan21(tmp_path_factory):
    return _build(tmp_path_factory, "wan21")


@pytest.fixture(scope="module")
def flf2v(tmp_path_factory):
    return _build(tmp_path_factory, "flf2v")


@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    return _build(tmp_path_factory, "wan22")


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    return _build(tmp_path_factory, "ti2v")


def latent_shape(kind):
    h, w, f = SIZES[kind]
    ch, s = (48, 16) if kind == "ti2v" else (16, 8)
    return (1, ch, (f - 1) // 4 + 1, h // s, w // s)


def i2v_graph(source, start, *, kind="wan21", end=None, clip=True, guidance=5.0, guidance_2=0.0, seed=0,
              width=None, height=None, num_frames=None, stages=None):
    h, w, f = SIZES[kind]
    g = GraphBuilder()
    loader = g.node("WanPipelineLoader", source=str(source))
    pos = g.node("WanTextEncode", text_encoder=loader[1], text=PROMPT)
    neg = g.node("WanTextEncode", text_encoder=loader[1], text=NEGATIVE)
    first = load_image_node(g, start)
    cond = dict(positive=pos[0], negative=neg[0], vae=loader[2], width=width or w, height=height or h,
                num_frames=num_frames or f, batch=1, start_image=first[0])
    if end is not None:
        cond["end_image"] = load_image_node(g, end)[0]
    if clip:
        vision = g.node("WanCLIPVisionLoader", source=str(source))
        cond["clip_vision_output"] = g.node("WanCLIPVisionEncode", clip_vision=vision[0], image=first[0])[0]
        if end is not None:
            cond["clip_vision_end_output"] = g.node("WanCLIPVisionEncode", clip_vision=vision[0],
                                                    image=cond["end_image"])[0]
    i2v = g.node("WanImageConditioning", **cond)
    common = dict(model=loader[0], positive=i2v[0], negative=i2v[1], seed=seed, steps=STEPS, guidance=guidance,
                  guidance_2=guidance_2, scheduler="unipc", shift=0.0)
    if stages is None:
        den = g.node("WanDenoise", latent=i2v[2], **common)
    else:
        first_stage = g.node("WanDenoise", latent=i2v[2], end_step=stages, return_with_leftover_noise=True, **common)
        den = g.node("WanDenoise", latent=first_stage[0], start_step=stages, add_noise=False, **common)
    dec = g.node("WanVAEDecode", vae=loader[2], latent=den[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix=kind, format="npy", id="frames")
    g.node("SaveTensor", tensor=den[0], filename_prefix=f"{kind}_latent", format="npy", id="latent")
    return g


def run_outputs(tmp_path, g) -> tuple[np.ndarray, np.ndarray]:
    """(frames, final latent) the graph saved."""
    res = Executor(output_dir=tmp_path).run(g.to_workflow())
    return np.load(res.outputs["frames"]["path"]), np.load(res.outputs["latent"]["path"])


def run_frames(tmp_path, g) -> np.ndarray:
    return run_outputs(tmp_path, g)[0]


_REFERENCES: dict = {}


def _reference(pipe, kind, start, end=None, guidance=5.0, guidance_2=None, seed=7):
    """diffusers' frames, computed once per pipeline and settings (tests share them)."""
    key = (id(pipe), kind, str(start), str(end), guidance, guidance_2, seed)
    if key not in _REFERENCES:
        _REFERENCES[key] = _run_reference(pipe, kind, start, end, guidance, guidance_2, seed)
    return _REFERENCES[key]


def _run_reference(pipe, kind, start, end, guidance, guidance_2, seed):
    """(frames [F, H, W, 3], final latents [1, C, T', h, w]) of diffusers' pipeline."""
    from PIL import Image
    h, w, f = SIZES[kind]
    last = None if end is None else Image.open(end).convert("RGB")
    extra = {} if guidance_2 is None else {"guidance_scale_2": guidance_2}
    frames, latents = reference_outputs(pipe, make_noise(seed, latent_shape(kind)),
                                        image=Image.open(start).convert("RGB"), last_image=last, prompt=PROMPT,
                                        negative_prompt=NEGATIVE, height=h, width=w, num_frames=f,
                                        num_inference_steps=STEPS, guidance_scale=guidance, **extra)
    return frames[0], latents


def _check(ours, ref, kind):
    """`ours`, `ref`: (frames, latents), or frames alone."""
    h, w, f = SIZES[kind]
    (frames, latents), (ref_frames, ref_latents) = (x if isinstance(x, tuple) else (x, None) for x in (ours, ref))
    assert frames.shape == ref_frames.shape == (f, h, w, 3)
    err = rel_err(frames, ref_frames)
    print(f"{kind}: frames' max relative error vs diffusers {err:.2e}")
    assert err < FRAMES_TOL, f"{kind} frames differ from diffusers by {err:.2e}"
    if latents is not None:
        assert latents.shape == ref_latents.shape == latent_shape(kind)
        err = rel_err(latents, ref_latents)
        print(f"{kind}: final latents' max relative error vs diffusers {err:.2e}")
        assert err < LATENT_TOL, f"{kind} final latents differ from diffusers by {err:.2e}"


@pytest.mark.parametrize("cfg_batch", [True, False])
def test_wan21_i2v_matches_diffusers(wan21, images, tmp_path, monkeypatch, cfg_batch):
    """CFG with a negative prompt; CLIP tokens of the start image; both CFG layouts (batched / two passes)."""
    import nodes.wan.pipelines.sampling
    if not cfg_batch:
        monkeypatch.setattr(nodes.wan.pipelines.sampling, "CFG_BATCH_MAX_TOKENS", 0)
    folder, pipe = wan21
    ref = _reference(pipe, "wan21", images[0])
    _check(run_outputs(tmp_path, i2v_graph(folder, images[0], seed=7)), ref, "wan21")


def test_wan21_i2v_without_graph(wan21, images):
    """The model-level API (`WanPipeline.text_image_to_video`) gives the same frames."""
    from PIL import Image
    from nodes.wan.pipelines.pipeline import load_pipeline
    folder, pipe = wan21
    ref = _reference(pipe, "wan21", images[0])
    h, w, f = SIZES["wan21"]
    ours = load_pipeline(folder).text_image_to_video(Image.open(images[0]), PROMPT, NEGATIVE, height=h, width=w,
                                                     num_frames=f, steps=STEPS, guidance=5.0, seed=7)[0]
    _check(ours, ref[0], "wan21")


def test_flf2v_matches_diffusers(flf2v, images, tmp_path):
    folder, pipe = flf2v
    ref = _reference(pipe, "flf2v", images[0], end=images[1], guidance=5.5)
    _check(run_outputs(tmp_path, i2v_graph(folder, images[0], kind="flf2v", end=images[1], guidance=5.5, seed=7)),
           ref, "flf2v")


def test_flf2v_condition_equals_diffusers_prepare_latents(flf2v, images):
    """The 20 conditioning channels themselves (mask layout, conditioning video, VAE mode, normalisation)."""
    import torch
    from PIL import Image
    from nodes.wan.pipelines.image_to_video import i2v_concat_latents
    from nodes.wan.checkpoints.loaders import load_vae
    folder, pipe = flf2v
    h, w, f = SIZES["flf2v"]
    start, end = (Image.open(p).convert("RGB") for p in images)
    prep = lambda im: pipe.video_processor.preprocess(im, height=h, width=w).to(torch.float32)
    with torch.no_grad():
        _, want = pipe.prepare_latents(prep(start), 2, 16, h, w, f, torch.float32, "cpu", None,
                                       torch.zeros(latent_shape("flf2v")).repeat(2, 1, 1, 1, 1), prep(end))
    got = i2v_concat_latents(load_vae(folder), start, h, w, f, batch=2, last_image=end).asnumpy()
    assert got.shape == tuple(want.shape) == (2, 20, 3, 4, 6)
    np.testing.assert_array_equal(got[:, :4], want[:, :4].numpy())
    assert rel_err(got[:, 4:], want[:, 4:].numpy()) < 1e-5


def test_wan22_i2v_two_experts_matches_diffusers(wan22, images, tmp_path):
    """No CLIP; boundary 0.9: step 0 on the high-noise expert, the rest on the low-noise one."""
    folder, pipe = wan22
    ref = _reference(pipe, "wan22", images[0], guidance=4.0, guidance_2=3.0)
    _check(run_outputs(tmp_path, i2v_graph(folder, images[0], kind="wan22", clip=False, guidance=4.0,
                                           guidance_2=3.0, seed=7)), ref, "wan22")


def test_ti2v_first_frame_matches_diffusers(ti2v, images, tmp_path):
    """expand_timesteps: first latent frame replaced by the image's latents, its tokens at timestep 0."""
    folder, pipe = ti2v
    ref = _reference(pipe, "ti2v", images[0])
    _check(run_outputs(tmp_path, i2v_graph(folder, images[0], kind="ti2v", clip=False, seed=7)), ref, "ti2v")


def test_ti2v_text_only_matches_diffusers(ti2v, tmp_path):
    """TI2V-5B without an image: the T2V graph (WanEmptyLatentVideo sized by the Wan2.2 VAE: 48 channels,
    /16) against `WanPipeline(expand_timesteps=True)` on the same files (all tokens at timestep t)."""
    from diffusers import WanPipeline
    folder, pipe = ti2v
    h, w, f = SIZES["ti2v"]
    g = GraphBuilder()
    loader = g.node("WanPipelineLoader", source=str(folder))
    pos = g.node("WanTextEncode", text_encoder=loader[1], text=PROMPT)
    neg = g.node("WanTextEncode", text_encoder=loader[1], text=NEGATIVE)
    lat = g.node("WanEmptyLatentVideo", width=w, height=h, num_frames=f, vae=loader[2])
    den = g.node("WanDenoise", model=loader[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=11,
                 steps=STEPS, guidance=5.0, scheduler="unipc", shift=0.0)
    dec = g.node("WanVAEDecode", vae=loader[2], latent=den[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix="ti2v_t2v", format="npy", id="frames")
    g.node("SaveTensor", tensor=den[0], filename_prefix="ti2v_t2v_latent", format="npy", id="latent")
    t2v = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                      transformer=pipe.transformer, scheduler=pipe.scheduler, expand_timesteps=True)
    frames, latents = reference_outputs(t2v, make_noise(11, latent_shape("ti2v")), prompt=PROMPT,
                                        negative_prompt=NEGATIVE, height=h, width=w, num_frames=f,
                                        num_inference_steps=STEPS, guidance_scale=5.0)
    _check(run_outputs(tmp_path, g), (frames[0], latents), "ti2v")


@pytest.mark.parametrize("kind", ["wan22", "ti2v"])
def test_chained_stages_equal_single_run(kind, wan22, ti2v, images, tmp_path):
    """Split at step 1 (Wan2.2: the expert switch): the image conditioning rides along with the sampler state."""
    folder = {"wan22": wan22, "ti2v": ti2v}[kind][0]
    single = run_outputs(tmp_path / "single", i2v_graph(folder, images[0], kind=kind, clip=False, seed=3))
    chained = run_outputs(tmp_path / "chained", i2v_graph(folder, images[0], kind=kind, clip=False, seed=3, stages=1))
    np.testing.assert_array_equal(chained[1], single[1])       # latents
    np.testing.assert_array_equal(chained[0], single[0])       # frames


@pytest.mark.parametrize("field,value,suggestion", [
    ("width", 100, "96 or 112"), ("height", 40, "32 or 48"), ("num_frames", 10, "9 or 13")])
def test_bad_sizes_rejected(images, tmp_path, field, value, suggestion):
    from graphrt import WorkflowError, validate
    load_node_packs()
    g = i2v_graph("tiny", images[0], clip=False, **{field: value})
    errors = validate(g.to_workflow())
    messages = " ".join(e.message for e in errors)
    assert suggestion in messages and field in messages
    with pytest.raises(WorkflowError):
        Executor(output_dir=tmp_path).run(g.to_workflow())


def test_missing_clip_vision_output_is_named(wan21, images, tmp_path):
    folder, _ = wan21
    with pytest.raises(Exception) as info:
        run_frames(tmp_path, i2v_graph(folder, images[0], clip=False))
    text = str(info.value) + repr(getattr(info.value, "__cause__", ""))
    assert "WanImageConditioning" in text and "clip_vision_output" in text


def test_i2v_templates_validate():
    from graphrt import validate
    load_node_packs()
    for name in ("wan21_i2v_480p.json", "wan21_flf2v_720p.json", "wan22_i2v_a14b.json"):
        assert validate(Workflow.load(ROOT / "workflows" / name)) == [], name
