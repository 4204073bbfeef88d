"""LATENT dicts say which space they hold: ours normalised, ComfyUI's raw VAE latents. A graph that
hands a raw latent to our nodes gets the same video as one that hands the normalised latent."""
from __future__ import annotations

import numpy as np
import pytest

import mindspore as ms

from graphrt import Executor, GraphBuilder, Input, Node, Output, register_node
from graphrt.registry import unregister_node
from nodes.wan import load_vae
from nodes.wan.pipelines.latent_space import latent_stats, normalized_samples, raw_samples


def test_conversions_match_the_vae_and_invert():
    vae = load_vae("tiny")
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 16, 2, 4, 4)).astype(np.float32))
    raw = {"samples": x, "normalized": False}
    np.testing.assert_allclose(normalized_samples(raw).asnumpy(), vae.normalize_latents(x).asnumpy(), rtol=1e-6,
                               atol=1e-6)
    back = raw_samples({"samples": normalized_samples(raw), "normalized": True}).asnumpy()
    np.testing.assert_allclose(back, x.asnumpy(), rtol=1e-5, atol=1e-5)
    assert normalized_samples({"samples": x}) is x          # a dict without the key is ours: normalised
    with pytest.raises(ValueError, match="16.*48"):
        latent_stats(4)


class _GivenLatent(Node):
    """Test-only source of a LATENT dict, as a ComfyUI-family node would hand one over."""
    CATEGORY = "test"
    INPUTS = [Input("which", ["normalized", "raw"])]
    OUTPUTS = [Output("latent", "LATENT")]
    VALUES: dict = {}

    def execute(self, ctx, which):
        return (self.VALUES[which],)


@pytest.fixture
def given_latent():
    register_node(_GivenLatent)
    yield _GivenLatent
    unregister_node("_GivenLatent")


def test_a_raw_latent_gives_the_same_denoise_and_decode(tmp_path, given_latent):
    # The same start latent once normalised (ours) and once raw (as ComfyUI's nodes hold it),
    # denoised from a later step (so the latent matters) and decoded.
    x = np.random.default_rng(1).standard_normal((1, 16, 2, 4, 4)).astype(np.float32)
    normalized = {"samples": ms.Tensor(x), "normalized": True}
    given_latent.VALUES.update(normalized=normalized,
                               raw={"samples": raw_samples(normalized), "normalized": False})
    ex = Executor(cache="none", output_dir=str(tmp_path))
    results = {}
    for which in ("normalized", "raw"):
        g = GraphBuilder()
        load = g.node("WanPipelineLoader", source="tiny")
        pos = g.node("WanTextEncode", text_encoder=load[1], text="a fox")
        lat = g.node("_GivenLatent", which=which)
        den = g.node("WanDenoise", model=load[0], positive=pos[0], latent=lat[0], seed=3, steps=4,
                     guidance=1.0, scheduler="euler", shift=3.0, start_step=2)
        dec = g.node("WanVAEDecode", vae=load[2], latent=lat[0])
        out = ex.run(g.to_workflow(), targets=[den.id, dec.id]).outputs
        results[which] = (out[den.id]["latent"]["samples"].asnumpy(), out[dec.id]["images"])
    assert np.abs(results["normalized"][0]).max() > 0
    np.testing.assert_allclose(results["raw"][0], results["normalized"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results["raw"][1], results["normalized"][1], rtol=1e-5, atol=1e-5)


def test_a_watched_wan_denoise_sends_a_latent_preview_per_step(tmp_path):
    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source="tiny")
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a fox")
    lat = g.node("WanEmptyLatentVideo", width=64, height=48, num_frames=5)
    den = g.node("WanDenoise", model=load[0], positive=pos[0], latent=lat[0], seed=3, steps=3,
                 guidance=1.0, scheduler="unipc", shift=3.0)
    ex = Executor(cache="none", output_dir=str(tmp_path))
    pictures = []
    stop = ex.subscribe(lambda e: pictures.append(e.data["image"]) if e.type == "preview" else None, previews=True)
    try:
        ex.run(g.to_workflow(), targets=[den.id])
    finally:
        stop()
    assert len(pictures) == 3 and all(p.shape == (6, 8, 3) for p in pictures)
    assert not np.array_equal(pictures[0], pictures[-1])          # the picture follows the denoising
    unwatched = Executor(cache="none", output_dir=str(tmp_path))
    seen = []
    unwatched.subscribe(lambda e: seen.append(e.type))             # no previews asked for: none built
    unwatched.run(g.to_workflow(), targets=[den.id])
    assert "preview" not in seen
