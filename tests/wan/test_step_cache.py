"""Step caching (WanStepCache -> WanDenoise's step_cache): off at threshold 0, the skip rule, CFG
batching, chained stages, the expert switch, LoRA views and MagCache calibration, on the tiny preset."""
from __future__ import annotations

import numpy as np
import pytest

import mindspore as ms

from graphrt import Executor, GraphBuilder
from graphrt.registry import load_node_packs

from nodes.wan.pipelines import sampling
from nodes.wan.pipelines.mag_ratios import PRESETS, preset_for, published_table, resample
from nodes.wan.pipelines.step_cache import StepCache, StepCacheSession, Streak, magcache_skips

STEPS = 8
HUGE = 100.0     # a threshold every step passes: only retention and max_consecutive_skips decide


@pytest.fixture(scope="module")
def ex():
    load_node_packs()
    return Executor(cache="lru:64")    # keeps the model, prompts and calibration across tests


def t2v(step_cache=None, stages=None, calibrate=False, guidance=5.0, steps=STEPS):
    """The tiny T2V graph up to the denoised latent; returns (graph, [denoise nodes])."""
    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source="tiny")
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a red fox in the snow")
    neg = g.node("WanTextEncode", text_encoder=load[1], text="")
    lat = g.node("WanEmptyLatentVideo", width=64, height=48, num_frames=9)
    common = dict(model=load[0], positive=pos[0], negative=neg[0], seed=3, steps=steps, guidance=guidance,
                  scheduler="unipc", shift=3.0)
    if step_cache is not None:
        extra = {}
        if calibrate:
            extra["ratios"] = g.node("WanStepCacheCalibrate", latent=lat[0], **common)[0]
        common["step_cache"] = g.node("WanStepCache", **step_cache, **extra)[0]
    if stages is None:
        return g, [g.node("WanDenoise", latent=lat[0], **common)]
    first = g.node("WanDenoise", latent=lat[0], end_step=stages, return_with_leftover_noise=True, **common)
    return g, [first, g.node("WanDenoise", latent=first[0], start_step=stages, add_noise=False, **common)]


def run(ex, g, nodes):
    res = ex.run(g.to_workflow(), targets=[n.id for n in nodes])
    return [res.outputs[n.id]["latent"] for n in nodes], res


def cache(mode, threshold, skips=2, retention=0.25, **kw):
    return dict(mode=mode, threshold=threshold, max_consecutive_skips=skips, retention=retention, **kw)


def expected_skips(segments, retention, max_skips):
    """The specified rule when every step passes the threshold: in each expert's run of steps, the
    first round(retention * length) run, and so does the first (nothing to reuse yet); after that at
    most `max_skips` steps in a row are skipped, then one runs."""
    out = []
    for start, length in segments:
        keep, streak = max(1, int(retention * length + 0.5)), 0
        for j in range(keep, length):
            if streak < max_skips:
                out.append(start + j)
                streak += 1
            else:
                streak = 0
    return out


# Both modes: magcache with ratios calibrated in the same graph, first_block.
MODES = [("magcache", {"calibrate": True}), ("first_block", {})]


@pytest.mark.parametrize("mode,extra", MODES)
def test_threshold_zero_is_the_plain_loop_bit_for_bit(ex, mode, extra):
    (plain,), _ = run(ex, *t2v())
    (cached,), _ = run(ex, *t2v(cache(mode, 0.0), **extra))
    assert np.array_equal(cached["samples"].asnumpy(), plain["samples"].asnumpy())
    stats = cached["step_cache_stats"]
    assert stats["skipped"] == 0 and stats["evaluations"] == 2 * STEPS
    assert stats["blocks_run"] == stats["blocks_total"] > 0


@pytest.mark.parametrize("mode,extra", MODES)
@pytest.mark.parametrize("skips,retention", [(2, 0.25), (1, 0.0)])
def test_large_threshold_skips_by_the_rule(ex, mode, extra, skips, retention):
    (plain,), _ = run(ex, *t2v())
    g, nodes = t2v(cache(mode, HUGE, skips, retention), **extra)
    (cached,), result = run(ex, g, nodes)
    stats = cached["step_cache_stats"]
    assert result.report[nodes[0].id].metrics == {"step_cache": stats}     # the run report says it too
    want = expected_skips([(0, STEPS)], retention, skips)
    assert stats["skipped_steps"] == want
    assert stats["skipped"] == 2 * len(want)          # CFG: both passes of a step are skipped together
    blocks = stats["blocks_total"] // stats["evaluations"]
    kept = 0 if mode == "magcache" else 1             # first_block still runs the first block
    assert stats["blocks_run"] == 2 * blocks * (STEPS - len(want)) + 2 * kept * len(want)
    assert not np.array_equal(cached["samples"].asnumpy(), plain["samples"].asnumpy())


# Thresholds at which the tiny model skips some steps, not all (its first-block changes are 0.67-1.24).
@pytest.mark.parametrize("mode,threshold,extra", [("magcache", 0.3, {"calibrate": True}),
                                                  ("first_block", 0.8, {})])
def test_cfg_batched_and_separate_passes_agree(monkeypatch, mode, threshold, extra):
    load_node_packs()
    (batched,), _ = run(Executor(cache="none"), *t2v(cache(mode, threshold, 3, 0.0), **extra))
    monkeypatch.setattr(sampling, "CFG_BATCH_MAX_TOKENS", 0)
    (separate,), _ = run(Executor(cache="none"), *t2v(cache(mode, threshold, 3, 0.0), **extra))
    a, b = batched["step_cache_stats"], separate["step_cache_stats"]
    assert 0 < len(a["skipped_steps"]) < STEPS - 1, a     # the threshold decided, not the limits
    assert a["skipped_steps"] == b["skipped_steps"] and a["skipped"] == b["skipped"]
    x, y = batched["samples"].asnumpy(), separate["samples"].asnumpy()
    assert np.abs(x - y).max() <= 1e-5 * np.abs(x).max()


@pytest.mark.parametrize("mode,threshold,extra,split", [
    ("magcache", HUGE, {"calibrate": True}, 3), ("magcache", HUGE, {"calibrate": True}, 5),
    ("first_block", HUGE, {}, 3), ("first_block", 0.8, {}, 5)])
def test_chained_stages_with_caching_equal_one_cached_run(ex, mode, threshold, extra, split):
    (one,), _ = run(ex, *t2v(cache(mode, threshold, 3, 0.0), **extra))
    (first, second), _ = run(ex, *t2v(cache(mode, threshold, 3, 0.0), stages=split, **extra))
    assert np.array_equal(second["samples"].asnumpy(), one["samples"].asnumpy())
    steps = first["step_cache_stats"]["skipped_steps"] + second["step_cache_stats"]["skipped_steps"]
    assert steps == one["step_cache_stats"]["skipped_steps"]
    assert split in steps     # the second stage starts by reusing what the first one cached


def _denoiser_and_conds(ex):
    g, _ = t2v()
    res = ex.run(g.to_workflow(), targets=["1", "2", "3"])
    return res.outputs["1"]["model"], res.outputs["2"]["conditioning"], res.outputs["3"]["conditioning"]


def _noise(shape=(1, 16, 3, 6, 8)):
    return np.random.default_rng(5).standard_normal(shape).astype(np.float32)


def test_expert_switch_starts_afresh(ex):
    model, pos, neg = _denoiser_and_conds(ex)
    two = model.with_(transformer_2=model.transformer, boundary_ratio=0.8)   # a Wan2.2 A14B-style switch
    session = StepCacheSession(StepCache("first_block", HUGE, 2, 0.25))
    sampling.denoise(two, pos, neg, steps=12, guidance=5.0, noise=_noise(), step_cache=session)
    sched = sampling.make_scheduler("unipc", 12, two.default_shift, two.scheduler_config)
    high = int(sum(float(t) >= 800 for t in sched.timesteps))
    assert 2 < high < 10
    want = expected_skips([(0, high), (high, 12 - high)], 0.25, 2)
    assert session.skipped_steps == want and high not in want


def test_lora_view_runs_through_the_cache(ex):
    from nodes.wan.models.lora import LoraWeights, with_lora
    model, pos, neg = _denoiser_and_conds(ex)
    rng = np.random.default_rng(0)
    lora = LoraWeights()
    for i in range(len(model.transformer.blocks)):
        for m in ("attn1.to_q", "attn2.to_v", "ffn.net.2"):
            w = dict(model.transformer.parameters_and_names())[f"blocks.{i}.{m}.weight"]
            lora.down[f"blocks.{i}.{m}"] = rng.standard_normal((2, w.shape[1])).astype(np.float32) * 0.5
            lora.up[f"blocks.{i}.{m}"] = rng.standard_normal((w.shape[0], 2)).astype(np.float32) * 0.5
    styled = model.with_(transformer=with_lora(model.transformer, lora, 1.0))

    def sample(denoiser, config=None):
        session = None if config is None else StepCacheSession(config)
        x, _ = sampling.denoise(denoiser, pos, neg, steps=4, guidance=5.0, noise=_noise(), step_cache=session)
        return x.asnumpy()

    plain_lora = sample(styled)
    assert np.array_equal(sample(styled, StepCache("first_block", 0.0)), plain_lora)
    assert not np.allclose(sample(model), plain_lora)      # the LoRA is applied inside the hooked blocks
    assert not np.allclose(sample(styled, StepCache("first_block", HUGE, 2, 0.0)), plain_lora)


def test_calibration_measures_the_residual_ratios_and_is_computed_once(ex):
    g, _ = t2v(cache("magcache", 0.1), calibrate=True)
    cal = [nid for nid, n in g.to_workflow().nodes.items() if n["class_type"] == "WanStepCacheCalibrate"][0]
    res = ex.run(g.to_workflow(), targets=[cal])
    table = res.outputs[cal]["ratios"]["ratios"]
    assert table.shape == (STEPS, 2) and np.all(table[0] == 1.0)
    assert ex.run(g.to_workflow(), targets=[cal]).report[cal].status == "cached"

    # the same sampling, uncached, with the residuals taken off the transformer by a hook of our own
    model, pos, neg = _denoiser_and_conds(ex)
    residuals = []

    class Recorder:
        def __init__(self, base):
            self.base = base

        def __getattr__(self, name):
            return getattr(self.base, name)

        def __call__(self, *args, **kwargs):
            def hook(x, run_blocks, n):
                y = run_blocks(x, 0, None)
                residuals.append((y - x).asnumpy().astype(np.float64))
                return y
            return self.base(*args, blocks_hook=hook, **kwargs)

    from nodes.latent_nodes import noise_for      # the graph's seeded noise
    sampling.denoise(model.with_(transformer=Recorder(model.transformer)), pos, neg, steps=STEPS, guidance=5.0,
                     shift=3.0, noise=noise_for(None, 3, (1, 16, 3, 6, 8)))
    assert len(residuals) == STEPS             # CFG batched: one call per step, cond rows first
    norms = [np.sqrt((r * r).sum(-1)) for r in residuals]
    for i in range(1, STEPS):
        for track in (0, 1):
            want = np.mean(norms[i][track] / norms[i - 1][track])
            assert table[i, track] == pytest.approx(want, rel=1e-6)


def test_magcache_rule_accumulates_the_ratio_error():
    # constant ratio g: a streak of s skips has estimated error sum_k |1 - g^k|
    for g, threshold, max_skips, want in [(0.9, 0.15, 5, 1), (0.99, 0.1, 9, 4), (0.99, 0.1, 2, 2), (0.99, 0.0, 9, 0)]:
        streak, skipped = Streak(), 0
        while magcache_skips(streak, [g, g], threshold, max_skips):
            skipped += 1
        assert skipped == want, (g, threshold, max_skips)
        assert streak.skips == 0      # the step that computes starts a new streak


def test_published_ratios_are_picked_by_model_and_resampled():
    class D:
        def __init__(self, name, heads, layers, cin, two=False, **extra):
            self.name, self.transformer_2 = name, (object() if two else None)
            self.config = dict(num_attention_heads=heads, attention_head_dim=128, num_layers=layers,
                               in_channels=cin, **extra)
    assert preset_for(D("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 12, 30, 16)) == "wan2.1_t2v_1.3b"
    assert preset_for(D("x", 40, 40, 16)) == "wan2.1_t2v_14b"
    assert preset_for(D("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", 40, 40, 36, image_dim=1280)) == "wan2.1_i2v_14b_720p"
    assert preset_for(D("my-i2v", 40, 40, 36, image_dim=1280)) is None             # 480P or 720P: ambiguous
    assert preset_for(D("flf2v 720p", 40, 40, 36, pos_embed_seq_len=514)) is None
    assert preset_for(D("x", 40, 40, 16, two=True)) == "wan2.2_t2v_a14b"
    assert preset_for(D("x", 24, 30, 48), first_frame=True) == "wan2.2_ti2v_5b_i2v"
    for name, p in PRESETS.items():
        assert published_table(name).shape == (p.steps, 2)
    table = published_table("wan2.1_t2v_1.3b")
    short = resample(table, 20)
    assert short.shape == (20, 2) and np.array_equal(short[[0, -1]], table[[0, -1]])
    assert all(any(np.array_equal(r, t) for t in table) for r in short)


def test_auto_ratios_without_a_fitting_preset_say_how_to_calibrate(ex):
    (_,), _ = run(ex, *t2v())
    with pytest.raises(Exception, match="WanStepCacheCalibrate"):
        run(ex, *t2v(cache("magcache", 0.1)))
