"""ComfyUI's flow model sampling and schedulers (nodes/wan/pipelines/sigmas.py).

Expected values come from three independent places: float64 closed forms of the formulas in ComfyUI's
comfy/model_sampling.py and comfy/samplers.py (cited per test), and torch evaluating those float32
tensor formulas (for bit-exactness). karras / exponential, which ComfyUI takes unchanged from
k-diffusion, are checked against k-diffusion in test_k_samplers.py.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from nodes.wan.pipelines import sigmas as S

X86 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def shift64(shift, t):
    """comfy/model_sampling.py time_snr_shift, in float64."""
    t = np.asarray(t, dtype=np.float64)
    return shift * t / (1 + (shift - 1) * t)


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 8.0, 12.0, 1.15, 0.5])
def test_the_table_is_comfys_float32_table(shift):
    ms = S.ModelSamplingSD3(shift)
    assert ms.sigmas.dtype == np.float32 and ms.sigmas.shape == (1000,)
    # float64 closed form: sigma_i = shift*t/(1+(shift-1)t), t = i/1000
    np.testing.assert_allclose(ms.sigmas, shift64(shift, np.arange(1, 1001) / 1000), rtol=3e-7, atol=0)
    # ModelSamplingDiscreteFlow.set_parameters evaluates it on float32 tensors; torch gives the bits
    ts = (torch.arange(1, 1001, 1) / 1000) * 1000
    t = ts / 1000
    ref = t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)
    assert np.array_equal(ms.sigmas, ref.numpy())
    assert ms.sigma_max == 1.0 and ms.sigma_min == float(ref[0])


def test_timestep_percent_and_const_formulas():
    ms = S.ModelSamplingSD3(5.0)
    # timestep = sigma * multiplier; sigma(timestep) inverts it (multiplier 1000)
    np.testing.assert_array_equal(ms.timestep(np.float32(0.25)), np.float32(250.0))
    np.testing.assert_allclose(ms.sigma(np.float32(500.0)), 5 * 0.5 / (1 + 4 * 0.5), rtol=1e-7)
    # percent_to_sigma: 1.0 at 0%, 0.0 at 100%, time_snr_shift(shift, 1 - p) between (float64)
    assert ms.percent_to_sigma(0.0) == 1.0 and ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.3) == pytest.approx(5 * 0.7 / (1 + 4 * 0.7), rel=1e-15)
    # CONST: x = sigma*noise + (1-sigma)*latent; x0 = x - sigma*v; inverse divides by 1 - sigma
    rng = np.random.default_rng(0)
    noise, latent, v = (rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(3))
    s = np.float32(0.8)
    x = ms.noise_scaling(s, noise, latent)
    np.testing.assert_allclose(x, 0.8 * noise.astype(np.float64) + 0.2 * latent, rtol=1e-6, atol=1e-6)
    assert x.dtype == np.float32
    np.testing.assert_allclose(ms.calculate_denoised(s, v, x), x - 0.8 * v.astype(np.float64), atol=1e-6)
    np.testing.assert_allclose(ms.inverse_noise_scaling(np.float32(0.001), x), x / 0.999, rtol=1e-6)
    assert ms.calculate_input(s, x) is x


def table(ms, i):
    return float(ms.sigmas[i])


def test_simple_picks_every_kth_table_entry():
    # simple_scheduler: ss = 1000/steps, sigma_x = sigmas[-(1 + int(x*ss))], then 0
    ms = S.ModelSamplingSD3(8.0)
    got = S.calculate_sigmas(ms, "simple", 4)
    # t = 1, 0.75, 0.5, 0.25 -> 8t/(1+7t) = 1, 0.96, 0.888.., 0.7272..
    np.testing.assert_allclose(got, [1.0, 0.96, 8 / 9, 8 / 11, 0.0], rtol=2e-7)
    got = S.calculate_sigmas(ms, "simple", 3)      # ss = 333.33: indices 999, 666, 333
    assert got.tolist() == [table(ms, 999), table(ms, 666), table(ms, 333), 0.0]


def test_ddim_uniform():
    # ddim_scheduler: sigmas[1], sigmas[1+k], ... (k = 1000 // steps) reversed, after a leading 0
    ms = S.ModelSamplingSD3(3.0)
    got = S.calculate_sigmas(ms, "ddim_uniform", 4)
    assert got.tolist() == [table(ms, i) for i in (751, 501, 251, 1)] + [0.0]


@pytest.mark.parametrize("steps", [1, 4, 20, 33])
def test_normal_and_sgm_uniform(steps):
    # normal_scheduler: timesteps = linspace(1000*sigma_max, 1000*sigma_min, steps) (sgm: steps+1, last
    # dropped), sigma = time_snr_shift(shift, t/1000), then 0
    shift = 5.0
    ms = S.ModelSamplingSD3(shift)
    start, end = 1000.0, 1000 * float(ms.sigmas[0])
    for name, n, keep in (("normal", steps, steps), ("sgm_uniform", steps + 1, steps)):
        got = S.calculate_sigmas(ms, name, steps)
        ts = np.linspace(start, end, n)[:keep] if n > 1 else np.array([start])
        np.testing.assert_allclose(got[:-1], shift64(shift, ts / 1000), rtol=5e-7)
        assert got[-1] == 0 and len(got) == steps + 1
        if X86:   # bit-exact against torch's float32 linspace (x86 builds fuse its multiply-adds)
            s = torch.tensor(np.float32(1000.0)), torch.tensor(np.float32(end))
            tt = torch.linspace(s[0], s[1], n)[:keep] / 1000
            ref = shift * tt / (1 + (shift - 1) * tt)
            assert np.array_equal(got[:-1], ref.numpy()), name


def test_beta_uses_beta_quantiles_of_the_table():
    # beta_scheduler: t_i = rint(BetaPPF(1 - i/steps; 0.6, 0.6) * 999), repeats dropped, then 0
    ms = S.ModelSamplingSD3(5.0)
    steps = 12
    idx = np.rint(stats.beta.ppf(1 - np.arange(steps) / steps, 0.6, 0.6) * 999).astype(int)
    expected = [table(ms, i) for k, i in enumerate(idx) if k == 0 or i != idx[k - 1]] + [0.0]
    assert S.calculate_sigmas(ms, "beta", steps).tolist() == expected
    assert idx[0] == 999   # the first quantile is the top of the table


def test_linear_quadratic_by_hand():
    # linear_quadratic_schedule(steps=4, threshold 0.025): linear part [0, 0.0125], then
    # quadratic a*i^2 + b*i + c for i = 2, 3 with d = 2 - 0.1 = 1.9, a = d/(2*4), b = 0.0125 - 2d/4,
    # c = 4a; sigma = 1 - schedule, times sigma_max (1.0)
    d = 2 - 0.025 * 4
    a, b = d / (2 * 2 ** 2), 0.025 / 2 - 2 * d / 2 ** 2
    c = a * 4
    sched = [0.0, 0.0125, a * 4 + b * 2 + c, a * 9 + b * 3 + c, 1.0]
    got = S.calculate_sigmas(S.ModelSamplingSD3(5.0), "linear_quadratic", 4)
    np.testing.assert_allclose(got, [1 - v for v in sched], rtol=1e-7, atol=1e-7)
    assert S.calculate_sigmas(S.ModelSamplingSD3(5.0), "linear_quadratic", 1).tolist() == [1.0, 0.0]


def test_kl_optimal_by_hand():
    # kl_optimal_scheduler: tan(w*atan(sigma_min) + (1-w)*atan(sigma_max)), w = i/(n-1), then 0
    ms = S.ModelSamplingSD3(3.0)
    n = 7
    w = np.arange(n) / (n - 1)
    lo, hi = float(ms.sigmas[0]), 1.0
    expected = np.tan(w * math.atan(lo) + (1 - w) * math.atan(hi))
    got = S.calculate_sigmas(ms, "kl_optimal", n)
    np.testing.assert_allclose(got[:-1], expected, rtol=4e-7)
    assert got[-1] == 0


def test_ksampler_denoise_takes_the_tail_of_a_longer_schedule():
    # KSampler.set_steps: denoise < 1 -> int(steps/denoise) steps, keep the last steps+1
    ms = S.ModelSamplingSD3(5.0)
    got = S.ksampler_sigmas(ms, "simple", 10, "euler", denoise=0.5)
    # 20-step simple: sigma_x = sigmas[999 - 50x]; the last 11 are x = 10..19 and the final 0
    assert got.tolist() == [table(ms, 999 - 50 * x) for x in range(10, 20)] + [0.0]
    # denoise 0.3 with 7 steps: int(7/0.3) = 23 steps, ss = 1000/23
    got = S.ksampler_sigmas(ms, "simple", 7, "euler", denoise=0.3)
    ss = 1000 / 23
    assert got.tolist() == [table(ms, 999 - int(x * ss)) for x in range(16, 23)] + [0.0]
    assert S.ksampler_sigmas(ms, "simple", 10, "euler", denoise=0.99995).tolist() == \
        [table(ms, 999 - 100 * x) for x in range(10)] + [0.0]
    assert S.ksampler_sigmas(ms, "simple", 10, denoise=0.0).shape == (0,)


def test_uni_pc_drops_the_penultimate_sigma_in_ksampler_only():
    ms = S.ModelSamplingSD3(5.0)
    # DISCARD_PENULTIMATE_SIGMA_SAMPLERS: schedule 5 steps (indices 999, 799, 599, 399, 199), drop 199
    expected = [table(ms, i) for i in (999, 799, 599, 399)] + [0.0]
    for name in ("uni_pc", "uni_pc_bh2"):
        assert S.ksampler_sigmas(ms, "simple", 4, name).tolist() == expected
    assert S.ksampler_sigmas(ms, "simple", 4, "euler").tolist() == [table(ms, i) for i in (999, 749, 499, 249)] + [0.0]
    # BasicScheduler has no such rule, and its threshold is denoise < 1.0
    assert S.basic_scheduler(ms, "simple", 4).tolist() == [table(ms, i) for i in (999, 749, 499, 249)] + [0.0]
    got = S.basic_scheduler(ms, "simple", 4, denoise=0.5)
    assert got.tolist() == [table(ms, 999 - 125 * x) for x in range(4, 8)] + [0.0]


def test_ksampler_advanced_slicing():
    sig = np.array([1.0, 0.9, 0.7, 0.4, 0.2, 0.0], np.float32)
    np.testing.assert_array_equal(S.slice_sigmas(sig, start_step=2), np.float32([0.7, 0.4, 0.2, 0.0]))
    # end_at_step cuts to last_step+1 sigmas; with leftover noise the last sigma stays
    np.testing.assert_array_equal(S.slice_sigmas(sig, last_step=3), np.float32([1.0, 0.9, 0.7, 0.4]))
    np.testing.assert_array_equal(S.slice_sigmas(sig, last_step=3, force_full_denoise=True),
                                  np.float32([1.0, 0.9, 0.7, 0.0]))
    # an end at or past the schedule's end changes nothing, not even with force_full_denoise
    np.testing.assert_array_equal(S.slice_sigmas(sig, last_step=10000, force_full_denoise=True), sig)
    np.testing.assert_array_equal(S.slice_sigmas(sig, start_step=1, last_step=3, force_full_denoise=True),
                                  np.float32([0.9, 0.7, 0.0]))
    assert S.slice_sigmas(sig, start_step=5) is None      # nothing left: the latent comes back as is
    assert sig[3] == np.float32(0.4)                      # the input is not modified


def test_unknown_scheduler_is_an_error():
    with pytest.raises(ValueError, match="scheduler"):
        S.calculate_sigmas(S.ModelSamplingSD3(), "cosine", 10)
