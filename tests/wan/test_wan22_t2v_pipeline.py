"""Wan2.2 T2V A14B style (two experts) through the graph: a tiny diffusers `WanPipeline` with
`transformer` (high noise) + `transformer_2` (low noise) and boundary_ratio 0.875, saved in the
diffusers layout, loaded by WanPipelineLoader and sampled by WanDenoise (guidance / guidance_2),
against the pipeline's own call.

4 steps at shift 3 give timesteps 999, 900, 750, 500: two steps on each expert.
Tolerances (max |ours − diffusers| / max |diffusers|, fp32): frames 5e-4, final latents
(WanDenoise's LATENT vs `output_type="latent"`) 1e-4."""
from __future__ import annotations

import numpy as np
import pytest

from graphrt import Executor, GraphBuilder
from graphrt.registry import load_node_packs
from tests.wan.parity import rel_err
from tests.wan.reference import build_tiny_wan_pipeline, reference_outputs

from nodes.wan.pipelines.noise import make_noise

H, W, F, STEPS = 32, 48, 9, 4
BOUNDARY = 0.875
FRAMES_TOL, LATENT_TOL = 5e-4, 1e-4
PROMPT, NEGATIVE = "a red fox running in the snow", "blurry"


@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    load_node_packs()
    folder = tmp_path_factory.mktemp("wan22_t2v") / "pipe"
    pipe = build_tiny_wan_pipeline(folder, boundary_ratio=BOUNDARY)
    return folder, pipe, Executor(output_dir=folder.parent / "out")


def test_the_tiny_pipeline_has_two_different_experts(wan22):
    """Otherwise the comparison below could not tell which expert ran."""
    _, pipe, _ = wan22
    assert pipe.transformer_2 is not None and pipe.config.boundary_ratio == BOUNDARY
    a, b = pipe.transformer.proj_out.weight.detach(), pipe.transformer_2.proj_out.weight.detach()
    assert float((a - b).abs().max()) > 1e-2
    ts = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    ts.set_timesteps(STEPS)
    high = [int(t) for t in ts.timesteps if t >= BOUNDARY * 1000]
    assert 0 < len(high) < STEPS, ts.timesteps


@pytest.mark.parametrize("guidance, guidance_2", [(4.0, 3.0), (4.0, None)])
def test_two_experts_match_diffusers(wan22, guidance, guidance_2):
    """guidance on the high-noise expert, guidance_2 on the low-noise one (None / 0: the same guidance)."""
    folder, pipe, ex = wan22
    g = GraphBuilder()
    loader = g.node("WanPipelineLoader", source=str(folder))
    pos = g.node("WanTextEncode", text_encoder=loader[1], text=PROMPT)
    neg = g.node("WanTextEncode", text_encoder=loader[1], text=NEGATIVE)
    lat = g.node("WanEmptyLatentVideo", width=W, height=H, num_frames=F)
    den = g.node("WanDenoise", model=loader[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=21,
                 steps=STEPS, guidance=guidance, guidance_2=guidance_2 or 0.0, scheduler="unipc", shift=0.0)
    dec = g.node("WanVAEDecode", vae=loader[2], latent=den[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix="wan22", format="npy", id="frames")
    g.node("SaveTensor", tensor=den[0], filename_prefix="wan22_latent", format="npy", id="latent")
    res = ex.run(g.to_workflow())
    ours, ours_latent = (np.load(res.outputs[k]["path"]) for k in ("frames", "latent"))

    noise = make_noise(21, (1, 16, (F - 1) // 4 + 1, H // 8, W // 8))
    extra = {} if guidance_2 is None else {"guidance_scale_2": guidance_2}
    frames, latents = reference_outputs(pipe, noise, prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W,
                                        num_frames=F, num_inference_steps=STEPS, guidance_scale=guidance, **extra)
    assert ours.shape == frames[0].shape == (F, H, W, 3)
    assert ours_latent.shape == latents.shape == noise.shape
    errs = rel_err(ours, frames[0]), rel_err(ours_latent, latents)
    print(f"wan2.2 t2v guidance {guidance}/{guidance_2}: frames {errs[0]:.2e}, latents {errs[1]:.2e}")
    assert errs[0] < FRAMES_TOL and errs[1] < LATENT_TOL, errs
