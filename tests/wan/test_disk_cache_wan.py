"""The Wan pack on the disk tier: yesterday's workflow with a new seed neither loads nor runs the text
encoder again, and the video equals a run without any cache."""
from __future__ import annotations

import numpy as np

from graphrt import Executor, GraphBuilder


def _graph(seed):
    g = GraphBuilder()
    model = g.node("WanModelLoader", source="tiny")
    text = g.node("WanTextEncoderLoader", source="tiny", tokenizer_source="tiny")
    pos = g.node("WanTextEncode", text_encoder=text[0], text="a red fox")
    neg = g.node("WanTextEncode", text_encoder=text[0], text="")
    lat = g.node("WanEmptyLatentVideo", width=64, height=48, num_frames=5)
    den = g.node("WanDenoise", model=model[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=seed,
                 steps=2, guidance=5.0, scheduler="unipc", shift=3.0)
    return g, text, pos, den


def test_a_new_process_with_a_new_seed_does_not_touch_the_text_encoder(tmp_path):
    g, _, _, den = _graph(1)
    Executor(cache_dir=tmp_path / "tier", output_dir=str(tmp_path)).run(g.to_workflow(), targets=[den.id])
    g, text, pos, den = _graph(2)
    again = Executor(cache_dir=tmp_path / "tier", output_dir=str(tmp_path)).run(g.to_workflow(), targets=[den.id])
    assert again.report[text.id].status == "not_run", "the text encoder was loaded again"
    assert again.report[pos.id].status == "cached"
    fresh = Executor(cache="none", output_dir=str(tmp_path)).run(g.to_workflow(), targets=[den.id])
    np.testing.assert_array_equal(again.outputs[den.id]["latent"]["samples"].asnumpy(),
                                  fresh.outputs[den.id]["latent"]["samples"].asnumpy())
