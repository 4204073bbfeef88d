"""Step caching under ComfyUI's samplers and with VACE models: WanStepCache -> WanApplyStepCache -> KSampler /
KSamplerAdvanced / SamplerCustom (and WanDenoise), on the tiny ComfyUI-format files of tiny_comfy_files.py.

What must hold (issue #15, for the ComfyUI-named sampler path): threshold 0 gives the plain sampler's latent
bit for bit; a threshold every step passes skips exactly the steps the rule names (retention, max skips in
a row), CFG's two passes together, and the run report says so; a KSamplerAdvanced stage that starts where
one with the same model stopped continues its cache, so the pair equals one cached run; another MODEL (the
Wan2.2 low-noise expert) starts afresh; a VACE model's control branch is skipped with its blocks.
"""
from __future__ import annotations

import numpy as np
import pytest

from graphrt import Executor, GraphBuilder
from graphrt.registry import load_node_packs
from nodes.wan.checkpoints import model_folders
from nodes.wan.models.vace import WanVACETransformer3DModel, WanVACETransformerBlock
from tests.comfy.tiny_comfy_files import shared_models
from tests.wan.parity import rel_err
from tests.wan.test_step_cache import expected_skips   # the skip rule when every step passes

STEPS, SPLIT = 8, 3
HUGE = 100.0                 # every step passes: only retention and max skips in a row decide
T2V = "wan2.1_t2v_1.3B_fp16.safetensors"
VACE = "wan2.1_vace_14B_fp16.safetensors"
HIGH, LOW = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
# The tiny models match no published table: magcache takes one by name (resampled to STEPS).
MAGCACHE = dict(mode="magcache", ratios_preset="wan2.1_t2v_1.3b")
FIRST_BLOCK = dict(mode="first_block")


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    load_node_packs()
    models = shared_models(tmp_path_factory)
    before = model_folders.set_models_dir(models.root)
    yield Executor(cache="lru:64")
    model_folders.set_models_dir(before)


class Graph:
    """ComfyUI's T2V (or VACE) graph up to the sampler, on the tiny files."""

    def __init__(self, unet=T2V, vace=False):
        self.g = g = GraphBuilder()
        clip = g.node("CLIPLoader", clip_name="umt5_xxl_fp16.safetensors", type="wan", device="default")
        self.pos = g.node("CLIPTextEncode", clip=clip[0], text="a fox in the snow")[0]
        self.neg = g.node("CLIPTextEncode", clip=clip[0], text="")[0]
        self.latent = g.node("EmptyHunyuanLatentVideo", width=48, height=32, length=9, batch_size=1)[0]
        if vace:
            vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
            vc = g.node("WanVaceToVideo", positive=self.pos, negative=self.neg, vae=vae[0], width=48, height=32,
                        length=9, batch_size=1, strength=0.8)
            self.pos, self.neg, self.latent = vc[0], vc[1], vc[2]
        self.unets = {}
        self.default = unet

    def model(self, cache=None, unet=None):
        unet = unet or self.default
        if unet not in self.unets:
            m = self.g.node("UNETLoader", unet_name=unet, weight_dtype="default")
            self.unets[unet] = self.g.node("ModelSamplingSD3", model=m[0], shift=5.0)[0]
        m = self.unets[unet]
        if cache is None:
            return m
        sc = self.g.node("WanStepCache", **{"threshold": HUGE, "max_consecutive_skips": 2, "retention": 0.25,
                                            **cache})
        return self.g.node("WanApplyStepCache", model=m, step_cache=sc[0])[0]

    def ksampler(self, cache=None, sampler="euler", cfg=6.0):
        return self.g.node("KSampler", model=self.model(cache), seed=7, steps=STEPS, cfg=cfg, sampler_name=sampler,
                           scheduler="simple", positive=self.pos, negative=self.neg, latent_image=self.latent,
                           denoise=1.0)

    def advanced(self, model, latent, start, end, add_noise=True, leftover=True):
        return self.g.node("KSamplerAdvanced", model=model, add_noise="enable" if add_noise else "disable",
                           noise_seed=7, steps=STEPS, cfg=6.0, sampler_name="euler", scheduler="simple",
                           positive=self.pos, negative=self.neg, latent_image=latent, start_at_step=start,
                           end_at_step=end, return_with_leftover_noise="enable" if leftover else "disable")


def run(ex, graph, *nodes):
    res = ex.run(graph.g.to_workflow(), targets=[n.id for n in nodes])
    return [next(iter(res.outputs[n.id].values())) for n in nodes], res


def samples(latent):
    return latent["samples"].asnumpy()


@pytest.mark.parametrize("sampler", ["euler", "uni_pc", "heun", "dpmpp_sde"])
@pytest.mark.parametrize("cache", [MAGCACHE, FIRST_BLOCK], ids=["magcache", "first_block"])
def test_threshold_zero_is_the_plain_sampler_bit_for_bit(ex, sampler, cache):
    g = Graph()
    plain, cached = g.ksampler(sampler=sampler), g.ksampler({**cache, "threshold": 0.0}, sampler=sampler)
    (a, b), _ = run(ex, g, plain, cached)
    assert np.array_equal(samples(b), samples(a))
    stats = b["step_cache_stats"]
    assert stats["skipped"] == 0 and stats["evaluations"] >= 2 * STEPS     # CFG: two passes per model call
    assert "step_cache_stats" not in a


@pytest.mark.parametrize("cache", [MAGCACHE, FIRST_BLOCK], ids=["magcache", "first_block"])
@pytest.mark.parametrize("skips,retention", [(2, 0.25), (1, 0.0)])
def test_large_threshold_skips_by_the_rule_in_ksampler(ex, cache, skips, retention):
    g = Graph()
    plain = g.ksampler()
    cached = g.ksampler({**cache, "max_consecutive_skips": skips, "retention": retention})
    (a, b), res = run(ex, g, plain, cached)
    stats = b["step_cache_stats"]
    assert res.report[cached.id].metrics == {"step_cache": stats}          # the run report says it too
    want = expected_skips([(0, STEPS)], retention, skips)
    assert stats["skipped_steps"] == want and stats["skipped"] == 2 * len(want)   # both CFG passes together
    assert stats["evaluations"] == 2 * STEPS                               # euler: one model call per step
    kept = 0 if cache["mode"] == "magcache" else 1                         # first_block still runs block 0
    per_call = stats["blocks_total"] // stats["evaluations"]
    assert stats["blocks_run"] == 2 * per_call * (STEPS - len(want)) + 2 * kept * len(want)
    assert not np.array_equal(samples(b), samples(a))


def test_second_order_sampler_calls_share_their_steps_decision(ex):
    """heun calls the model twice per step (at sigma_i and, correcting, at sigma_i+1); SamplerCustom
    takes the step decisions from the schedule's sigmas all the same."""
    g = Graph()
    model = g.model(FIRST_BLOCK)
    sampler = g.g.node("KSamplerSelect", sampler_name="heun")
    sigmas = g.g.node("BasicScheduler", model=model, scheduler="simple", steps=STEPS, denoise=1.0)
    node = g.g.node("SamplerCustom", model=model, add_noise=True, noise_seed=7, cfg=6.0, positive=g.pos,
                    negative=g.neg, sampler=sampler[0], sigmas=sigmas[0], latent_image=g.latent)
    (out,), res = run(ex, g, node)
    stats = out["step_cache_stats"]
    assert stats["evaluations"] == 2 * (2 * STEPS - 1)       # heun's last step (to sigma 0) is a single call
    assert stats["skipped_steps"] == expected_skips([(0, STEPS)], 0.25, 2)
    assert res.report[node.id].metrics == {"step_cache": stats}


@pytest.mark.parametrize("cache", [MAGCACHE, FIRST_BLOCK], ids=["magcache", "first_block"])
def test_split_stages_with_the_same_model_equal_one_cached_run(ex, cache):
    g = Graph()
    model = g.model(cache)
    one = g.advanced(model, g.latent, 0, 10000, leftover=False)
    first = g.advanced(model, g.latent, 0, SPLIT)
    second = g.advanced(model, first[0], SPLIT, 10000, add_noise=False, leftover=False)
    (a, s1, s2), _ = run(ex, g, one, first, second)
    # euler's split equals one run up to float rounding: ComfyUI hands over x_K / (1 - sigma_K) in VAE space
    # (test_comfy_sampling.test_split_with_leftover_noise_versus_one_run); a cache not carried would
    # compute step SPLIT and differ by far more
    assert rel_err(samples(s2), samples(a)) < 2e-5
    steps = s1["step_cache_stats"]["skipped_steps"] + s2["step_cache_stats"]["skipped_steps"]
    assert steps == a["step_cache_stats"]["skipped_steps"] == expected_skips([(0, STEPS)], 0.25, 2)
    assert SPLIT in steps               # the second stage starts by reusing what the first one cached
    assert "step_cache_state" in s1 and "step_cache_state" not in s2


def test_another_model_starts_afresh(ex):
    """ComfyUI's Wan2.2 chain: the high-noise MODEL's stage, then the low-noise one's, each cached; the
    second has nothing of the first's to reuse and keeps its own first steps (retention of its steps)."""
    g = Graph(unet=HIGH)
    first = g.advanced(g.model(FIRST_BLOCK, HIGH), g.latent, 0, SPLIT)
    second = g.advanced(g.model(FIRST_BLOCK, LOW), first[0], SPLIT, 10000, add_noise=False, leftover=False)
    (s1, s2), _ = run(ex, g, first, second)
    assert s1["step_cache_stats"]["skipped_steps"] == expected_skips([(0, STEPS)], 0.25, 2)[:1]   # steps 0-2
    assert s2["step_cache_stats"]["skipped_steps"] == expected_skips([(SPLIT, STEPS - SPLIT)], 0.25, 2)
    assert SPLIT not in s2["step_cache_stats"]["skipped_steps"]


@pytest.fixture
def vace_block_calls(monkeypatch):
    """Counts the VACE control blocks run (the transformer calls blocks through `_call_block`)."""
    calls = []
    original = WanVACETransformer3DModel._call_block

    def counted(self, block, *args):
        if isinstance(block, WanVACETransformerBlock):
            calls.append(1)
        return original(self, block, *args)
    monkeypatch.setattr(WanVACETransformer3DModel, "_call_block", counted)
    return calls


@pytest.mark.parametrize("cache", [MAGCACHE, FIRST_BLOCK], ids=["magcache", "first_block"])
def test_vace_model_through_the_cache(ex, cache, vace_block_calls):
    g = Graph(unet=VACE, vace=True)
    plain, zero = g.ksampler(), g.ksampler({**cache, "threshold": 0.0})
    (a, b), _ = run(ex, g, plain, zero)
    assert np.array_equal(samples(b), samples(a))
    del vace_block_calls[:]
    cached = g.ksampler(cache)
    (c,), _ = run(ex, g, cached)
    stats = c["step_cache_stats"]
    want = expected_skips([(0, STEPS)], 0.25, 2)
    assert stats["skipped_steps"] == want
    # one VACE layer (block 0): its control block runs with every computed call; on a skipped one with
    # magcache never, with first_block as block 0 needs its hint
    computed = 2 * (STEPS - len(want))
    assert len(vace_block_calls) == computed + (0 if cache["mode"] == "magcache" else 2 * len(want))
    assert not np.array_equal(samples(c), samples(a))


def test_wan_denoise_takes_the_models_step_cache(ex):
    """WanDenoise on a MODEL patched by WanApplyStepCache caches as with its own step_cache input (VACE
    conditioning from ComfyUI's WanVaceToVideo: the two families mix)."""
    g = Graph(unet=VACE, vace=True)
    common = dict(positive=g.pos, negative=g.neg, latent=g.latent, seed=1, steps=STEPS, guidance=5.0,
                  scheduler="unipc", shift=5.0)
    sc = g.g.node("WanStepCache", mode="first_block", threshold=HUGE, max_consecutive_skips=2, retention=0.25)
    by_model = g.g.node("WanDenoise", model=g.model(FIRST_BLOCK), **common)
    by_input = g.g.node("WanDenoise", model=g.model(), step_cache=sc[0], **common)
    (a, b), _ = run(ex, g, by_model, by_input)
    assert np.array_equal(samples(a), samples(b))
    assert a["step_cache_stats"]["skipped_steps"] == expected_skips([(0, STEPS)], 0.25, 2)



def test_auto_ratios_know_a_comfy_start_frame(ex, monkeypatch):
    """TI2V's published ratios differ with and without a start frame; under ComfyUI's samplers the start
    frame is Wan22ImageToVideoLatent's noise mask on the LATENT, not a conditioning extra."""
    from nodes.wan.pipelines import comfy_sampling, step_cache
    asked = []

    def preset_for(denoiser, first_frame=False):
        asked.append(first_frame)
        return "wan2.2_ti2v_5b_i2v" if first_frame else "wan2.2_ti2v_5b_t2v"
    monkeypatch.setattr(step_cache, "preset_for", preset_for)
    g = Graph()
    sc = g.g.node("WanStepCache", mode="magcache", threshold=0.1, max_consecutive_skips=2, retention=0.25,
                  ratios_preset="auto")
    apply = g.g.node("WanApplyStepCache", model=g.model(), step_cache=sc[0])
    pos = g.g.node("CLIPTextEncode", clip=g.g.node("CLIPLoader", clip_name="umt5_xxl_fp16.safetensors", type="wan",
                                                   device="default")[0], text="a fox in the snow")
    (model, cond), _ = run(ex, g, apply, pos)
    empty = np.zeros((1, 16, 2, 4, 6), np.float32)
    mask = np.ones((1, 1, 2, 4, 6), np.float32)
    mask[:, :, 0] = 0.0
    for latent, want in (({"samples": empty}, "t2v"), ({"samples": empty, "noise_mask": mask}, "i2v")):
        out = comfy_sampling.ksampler(model, latent, seed=1, steps=2, cfg=1.0, sampler_name="euler",
                                      scheduler="simple", positive=cond, negative=None)
        assert out["step_cache_stats"]["ratios"].startswith(f"wan2.2_ti2v_5b_{want}")
    assert asked == [False, True]
