"""Video-to-video with the existing nodes (LoadVideoFrames -> WanVAEEncode -> WanDenoise from a later
step) against diffusers' WanVideoToVideoPipeline on a tiny random pipeline.

Tolerances (max |ours − diffusers| / max |diffusers|, fp32): frames 5e-4, final latents
(WanDenoise's LATENT vs `output_type="latent"`) 1e-4."""
from __future__ import annotations

import numpy as np
import pytest

from graphrt import Executor, GraphBuilder
from graphrt.registry import load_node_packs
from tests.wan.parity import rel_err
from tests.wan.reference import build_tiny_wan_pipeline, torch_one_thread

from nodes.wan import media
from nodes.wan.pipelines.noise import make_noise

H, W, F = 32, 48, 9
FRAMES_TOL, LATENT_TOL = 5e-4, 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    load_node_packs()
    tmp = tmp_path_factory.mktemp("v2v")
    pipe = build_tiny_wan_pipeline(tmp / "pipe")
    videos = {}
    for h, w in ((H, W), (2 * H, 2 * W)):   # the larger one is resized by both sides
        yy, xx = np.mgrid[0:h, 0:w]
        frames = np.stack([np.sin(xx / (5 * w / W) + 6 * i / F + yy / h) * 0.4 + 0.5 for i in range(F)])[..., None]
        frames = (np.concatenate([frames, frames[:, ::-1], 1 - frames], -1) * 255).astype(np.uint8)
        videos[h] = media.save_mp4(frames, tmp / f"in{h}.mp4", fps=16)
    return tmp, pipe, videos


@pytest.mark.parametrize("steps, strength, size", [(4, 0.75, H), (5, 0.6, 2 * H)])
def test_v2v_matches_diffusers(setup, steps, strength, size, monkeypatch):
    import torch
    from PIL import Image
    import diffusers.pipelines.wan.pipeline_wan_video2video as v2v_mod
    from diffusers import WanVideoToVideoPipeline
    tmp, pipe, videos = setup
    video = videos[size]
    noise = make_noise(3, (1, 16, (F - 1) // 4 + 1, H // 8, W // 8))
    np.save(tmp / "noise.npy", noise)
    start = steps - min(int(steps * strength), steps)      # diffusers' t_start

    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source=str(tmp / "pipe"))
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a wave")
    neg = g.node("WanTextEncode", text_encoder=load[1], text="")
    vid = g.node("LoadVideoFrames", path=str(video))
    frames = vid[0] if size == H else g.node("ImageResize", images=vid[0], width=W, height=H)[0]
    enc = g.node("WanVAEEncode", vae=load[2], images=frames)
    den = g.node("WanDenoise", model=load[0], positive=pos[0], negative=neg[0], latent=enc[0], steps=steps,
                 guidance=5.0, start_step=start, add_noise=True,
                 noise=g.node("WanLoadNoise", path=str(tmp / "noise.npy"))[0])
    dec = g.node("WanVAEDecode", vae=load[2], latent=den[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix="v2v", format="npy", id="frames")
    g.node("SaveTensor", tensor=den[0], filename_prefix="v2v_latent", format="npy", id="latent")
    res = Executor(output_dir=tmp / f"out{steps}").run(g.to_workflow())
    ours, ours_latent = (np.load(res.outputs[k]["path"]) for k in ("frames", "latent"))

    frames, _ = media.load_video(video)          # the very frames our graph read
    pil = [Image.fromarray(np.round(f * 255).astype(np.uint8)) for f in frames]
    monkeypatch.setattr(v2v_mod, "randn_tensor", lambda *a, **k: torch.from_numpy(noise))
    ref_pipe = WanVideoToVideoPipeline(**{k: v for k, v in pipe.components.items()
                                          if k in ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")})
    call = dict(video=pil, prompt="a wave", negative_prompt="", height=H, width=W, num_inference_steps=steps,
                guidance_scale=5.0, strength=strength)
    with torch.no_grad(), torch_one_thread():
        ref = ref_pipe(**call, output_type="np").frames[0]
        ref_latent = ref_pipe(**call, output_type="latent").frames.float().numpy()
    assert ours.shape == ref.shape == (F, H, W, 3)
    assert ours_latent.shape == ref_latent.shape == noise.shape
    errs = rel_err(ours, ref), rel_err(ours_latent, ref_latent)
    print(f"v2v steps={steps} strength={strength}: frames {errs[0]:.2e}, latents {errs[1]:.2e}")
    assert errs[0] < FRAMES_TOL and errs[1] < LATENT_TOL, errs


def test_saved_files_get_the_umask_mode(tmp_path):
    """Atomic writes go through a private temp file; the result must not stay private (0600)."""
    import os
    umask = os.umask(0o022)
    try:
        path = media.save_mp4(np.zeros((5, 16, 16, 3), np.float32), tmp_path / "a.mp4")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_image_resize_center_crop_keeps_aspect():
    frames = np.zeros((1, 40, 100, 3), np.float32)
    frames[:, :, 30:70] = 1.0                               # a white band in the middle 40 columns
    out = media.resize_frames(frames, 20, 20, "nearest", crop="center")   # crops to the middle 40x40
    assert out.shape == (1, 20, 20, 3) and out.min() == 1.0
    out = media.resize_frames(frames, 50, 20, "nearest")                  # plain resize keeps the black sides
    assert out[:, :, :10].max() == 0.0
