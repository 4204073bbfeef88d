"""VACE end to end: WanVaceConditioning -> WanDenoise -> WanTrimVideoLatent -> decode, against diffusers'
WanVACEPipeline on a tiny random VACE model (control video, mask, reference images)."""
from __future__ import annotations

import numpy as np
import pytest

from graphrt import Executor, GraphBuilder
from graphrt.registry import load_node_packs
from tests.wan.parity import rel_err
from tests.wan.reference import TINY_TRANSFORMER, build_tiny_wan_pipeline

from nodes.wan import media
from nodes.wan.pipelines.noise import make_noise

H, W, F = 32, 48, 9


@pytest.fixture(scope="module")
def vace(tmp_path_factory):
    import torch
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel
    load_node_packs()
    tmp = tmp_path_factory.mktemp("vace")
    base = build_tiny_wan_pipeline(tmp / "t2v")
    torch.manual_seed(4)
    transformer = WanVACETransformer3DModel(**TINY_TRANSFORMER, vace_layers=[0, 1], vace_in_channels=96).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    pipe = WanVACEPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                           transformer=transformer, scheduler=base.scheduler)
    pipe.save_pretrained(tmp / "pipe")
    yy, xx = np.mgrid[0:H, 0:W]
    video = np.stack([np.stack([np.sin(xx / 4 + i) * 0.4 + 0.5, np.cos(yy / 3 - i) * 0.4 + 0.5,
                                (xx + yy + 5 * i) % 17 / 17.0], -1) for i in range(F)]).astype(np.float32)
    mask = np.zeros((F, H, W, 3), np.float32)
    mask[:, :, W // 2:] = 1.0                       # regenerate the right half
    mask[4:] = 1.0                                  # and everything after frame 4
    paths = {"video": media.save_mp4(video, tmp / "control.mp4"), "mask": media.save_mp4(mask, tmp / "mask.mp4")}
    ref = np.zeros((24, 40, 3), np.float32)
    ref[4:20, 8:32] = [0.9, 0.2, 0.1]
    from PIL import Image
    Image.fromarray((ref * 255).astype(np.uint8)).save(tmp / "ref.png")
    paths["ref"] = tmp / "ref.png"
    # Not a multiple of 8: the reference processor first floors it to 16×32 (lanczos).
    Image.fromarray((ref[:21, 3:38] * 255).astype(np.uint8)).save(tmp / "ref_odd.png")
    paths["ref_odd"] = tmp / "ref_odd.png"
    return tmp, pipe, paths


@pytest.mark.parametrize("use_video, use_mask, use_ref, strength",
                         [(True, True, False, 1.0), (True, True, "ref", 0.7), (False, False, "ref", 1.0),
                          (True, False, "ref_odd", 1.0)])
def test_vace_matches_diffusers(vace, use_video, use_mask, use_ref, strength):
    import torch
    from PIL import Image
    tmp, pipe, paths = vace
    n_refs = 1 if use_ref else 0
    noise = make_noise(9, (1, 16, n_refs + (F - 1) // 4 + 1, H // 8, W // 8))
    np.save(tmp / "noise.npy", noise)

    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source=str(tmp / "pipe"))
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a red box")
    neg = g.node("WanTextEncode", text_encoder=load[1], text="")
    kw = {}
    if use_video:
        kw["control_video"] = g.node("LoadVideoFrames", path=str(paths["video"]))[0]
    if use_mask:
        kw["control_masks"] = g.node("LoadVideoFrames", path=str(paths["mask"]))[0]
    if use_ref:
        kw["reference_image"] = g.node("LoadImage", path=str(paths[use_ref]))[0]
    vc = g.node("WanVaceConditioning", positive=pos[0], negative=neg[0], vae=load[2], width=W, height=H, num_frames=F,
                strength=strength, **kw)
    den = g.node("WanDenoise", model=load[0], positive=vc[0], negative=vc[1], latent=vc[2], steps=3, guidance=4.0,
                 noise=g.node("WanLoadNoise", path=str(tmp / "noise.npy"))[0])
    trim = g.node("WanTrimVideoLatent", latent=den[0], trim_amount=vc[3])
    dec = g.node("WanVAEDecode", vae=load[2], latent=trim[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix="vace", format="npy")
    res = Executor(output_dir=tmp / f"out-{use_video}{use_mask}{use_ref}").run(g.to_workflow())
    ours = np.load([v["path"] for v in res.outputs.values()][0])

    def pil_frames(path):   # the very frames our graph read
        return [Image.fromarray(np.round(f * 255).astype(np.uint8)) for f in media.load_video(path)[0]]

    with torch.no_grad():
        ref = pipe(prompt="a red box", negative_prompt="", height=H, width=W, num_frames=F, num_inference_steps=3,
                   guidance_scale=4.0, conditioning_scale=strength, latents=torch.from_numpy(noise),
                   video=pil_frames(paths["video"]) if use_video else None,
                   mask=pil_frames(paths["mask"]) if use_mask else None,
                   reference_images=[Image.open(paths[use_ref]).convert("RGB")] if use_ref else None,
                   output_type="np").frames[0]
    assert ours.shape == ref.shape == (F, H, W, 3)
    assert rel_err(ours, ref) < 1e-4


def test_vace_rejects_a_control_video_of_another_size(vace):
    from nodes.wan.pipelines.vace_conditioning import vace_control
    from nodes.wan import load_vae
    tmp, _, _ = vace
    vae = load_vae(tmp / "pipe")
    with pytest.raises(ValueError, match="resize"):
        vace_control(vae, H, W, F, video=np.zeros((F, H, W + 16, 3), np.float32))


def test_vace_template_runs(vace, monkeypatch):
    """The shipped VACE template, pointed at the tiny model and made small, runs to an MP4."""
    from pathlib import Path
    from graphrt import Workflow
    tmp, _, _ = vace
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)                     # the template's sample assets are repo-relative
    wf = Workflow.load(root / "workflows" / "wan21_vace_1.3b.json")
    res = Executor(output_dir=tmp / "template").run(wf, params={
        "source": str(tmp / "pipe"), "width": W, "height": H, "num_frames": F, "steps": 2})
    mp4 = [v["path"] for v in res.outputs.values()][0]
    info = media.probe_video(mp4)
    assert info["frames"] == F and (info["width"], info["height"]) == (W, H)
