"""ComfyUI's samplers for flow models (nodes/wan/pipelines/k_samplers.py).

References, independent of the code under test:
* k-diffusion (0.1.1, the code ComfyUI's euler / heun / dpmpp_2m / karras / exponential are unchanged
  from) run on the same sigmas and the same analytic denoiser;
* torchsde's BrownianTree and k-diffusion's BrownianTreeNoiseSampler (what ComfyUI's SDE samplers draw
  from) and torch's own generator (what its ancestral samplers draw from);
* diffusers' UniPCMultistepScheduler (the UniPC that ComfyUI's extra_samplers/uni_pc.py also ports);
* float64 re-derivations of ComfyUI's flow-specific update rules (cited per test), fed the noise
  from those torch references;
* the closed-form probability-flow solution of a Gaussian data distribution.

k-diffusion is loaded from its installed sampling.py only (its package __init__ pulls in torchvision,
CLIP, wandb ... none of which the sampler code uses), so `pip install --no-deps k-diffusion` suffices.
"""
import importlib.util
import math
import pathlib
import sys
import types

import numpy as np
import pytest
import torch

from nodes.wan.pipelines import k_samplers as ks
from nodes.wan.pipelines import sigmas as S
from nodes.wan.pipelines.torch_randn import randn

# torchsde warns when a query time lies a rounding below its 1e-6-quantised start and clamps it;
# ComfyUI hits (and the port reproduces) the same clamp at the smallest sigma.
pytestmark = pytest.mark.filterwarnings("ignore:Should have ta>=t0")

SHAPE = (1, 4, 3, 8, 8)
MU, C = 0.3, 0.7          # Gaussian data: x0 ~ N(MU, C^2) per element


def load_kdiffusion_sampling():
    """k_diffusion/sampling.py with a stub for the one helper it takes from k_diffusion.utils."""
    if "_kdiff_ref.sampling" in sys.modules:
        return sys.modules["_kdiff_ref.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed")
    pkg_dir = pathlib.Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("_kdiff_ref")
    pkg.__path__ = [str(pkg_dir)]
    utils = types.ModuleType("_kdiff_ref.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.update({"_kdiff_ref": pkg, "_kdiff_ref.utils": utils})
    mod_spec = importlib.util.spec_from_file_location("_kdiff_ref.sampling", pkg_dir / "sampling.py")
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules["_kdiff_ref.sampling"] = mod
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def K():
    return load_kdiffusion_sampling()


def gaussian_x0(x, sigma):
    """The exact denoiser E[x0 | x] for x = (1-sigma) x0 + sigma n, x0 ~ N(MU, C^2), plus a mild
    nonlinearity so that no sampler is exact by accident."""
    s = np.float64(sigma)
    a = 1 - s
    x = np.asarray(x, dtype=np.float64)
    return MU + a * C * C / (a * a * C * C + s * s) * (x - a * MU) + 0.05 * s * np.tanh(x)


def model_np(x, sigma):
    return gaussian_x0(x, sigma).astype(np.float32)


def model_torch(x, sigma, **kwargs):
    s = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
    return torch.from_numpy(gaussian_x0(x.numpy(), s).astype(np.float32))


class Recorder:
    """model(x, sigma) that remembers the sigmas it was called with."""

    def __init__(self, fn=model_np):
        self.fn, self.sigmas = fn, []

    def __call__(self, x, sigma):
        self.sigmas.append(float(sigma))
        return self.fn(x, sigma)


def start(sig, seed=1):
    ms = S.ModelSamplingSD3(5.0)
    noise = randn(SHAPE, seed)
    return ms, noise, ms.noise_scaling(sig[0], noise, np.zeros(SHAPE, np.float32))


def schedule(name="simple", steps=12, shift=5.0, sampler="euler"):
    return S.ksampler_sigmas(S.ModelSamplingSD3(shift), name, steps, sampler)


# ---- samplers ComfyUI takes unchanged from k-diffusion -------------------------------------------------

@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("sched,steps", [("simple", 12), ("normal", 7), ("beta", 20), ("karras", 9)])
def test_matches_k_diffusion(K, name, sched, steps):
    sig = schedule(sched, steps)
    _, _, x = start(sig)
    ours = ks.sample(name, model_np, x, sig)
    ref = getattr(K, f"sample_{name}")(model_torch, torch.from_numpy(x), torch.from_numpy(sig), disable=True)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=2e-6)
    assert ours.dtype == np.float32


def test_euler_is_bit_identical_to_k_diffusion(K):
    # only +, -, *, / on float32: nothing to round differently
    sig = schedule("simple", 10)
    _, _, x = start(sig)
    ref = K.sample_euler(model_torch, torch.from_numpy(x), torch.from_numpy(sig), disable=True).numpy()
    assert np.array_equal(ks.sample("euler", model_np, x, sig), ref)
    assert np.array_equal(ks.sample("ddim", model_np, x, sig), ref)      # ComfyUI's ddim is euler


@pytest.mark.parametrize("steps", [1, 5, 30])
def test_karras_and_exponential_schedules_match_k_diffusion(K, steps):
    ms = S.ModelSamplingSD3(8.0)
    for name, ref in (("karras", K.get_sigmas_karras(steps, ms.sigma_min, ms.sigma_max, rho=7.0)),
                      ("exponential", K.get_sigmas_exponential(steps, ms.sigma_min, ms.sigma_max))):
        got = S.calculate_sigmas(ms, name, steps)
        # torch's float32 pow / exp are not always correctly rounded: an ulp apart at most
        np.testing.assert_allclose(got, ref.numpy(), rtol=2.5e-7, atol=0, err_msg=name)


# ---- noise ---------------------------------------------------------------------------------------------

def test_cpu_noise_sampler_is_torch_generator_seeded_with_seed_plus_one():
    # k_diffusion/sampling.py default_noise_sampler: on the CPU, seed += 1, then randn(x.shape) per call
    ns = ks.CPUNoiseSampler(SHAPE, 1234)
    g = torch.Generator().manual_seed(1235)
    for _ in range(3):
        assert np.array_equal(ns(0.5, 0.4), torch.randn(SHAPE, generator=g).numpy())


TREE_SHAPE = (2, 3, 5)     # 30 values: torch's vectorised randn path, cheap enough for many nodes


def test_brownian_tree_increments_are_torchsde_bit_for_bit():
    import torchsde

    sig = schedule("simple", 9)
    lo, hi = float(sig[sig > 0].min()), float(sig.max())
    for seed in (0, 2**40 + 3):
        ref = torchsde.BrownianTree(torch.tensor(np.float32(lo)), torch.zeros(TREE_SHAPE), torch.tensor(np.float32(hi)),
                                    entropy=seed, tol=1e-6, pool_size=24)
        ours = ks.BrownianTree(TREE_SHAPE, np.float32(lo), np.float32(hi), entropy=seed)
        queries = [(sig[i + 1], sig[i]) for i in range(len(sig) - 2)]
        queries += [(sig[3], np.float32(0.5) * (sig[2] + sig[3])), (sig[6], sig[1]), (sig[-2], sig[0])]
        for a, b in queries:
            expected = ref(torch.tensor(a), torch.tensor(b)).numpy()
            assert np.array_equal(ours(a, b), expected), (seed, a, b)


def test_brownian_tree_does_not_depend_on_query_order():
    sig = schedule("simple", 9)
    lo, hi = sig[sig > 0].min(), sig.max()
    pairs = [(sig[i + 1], sig[i]) for i in range(len(sig) - 2)]
    forward = ks.BrownianTree(TREE_SHAPE, lo, hi, entropy=5)
    backward = ks.BrownianTree(TREE_SHAPE, lo, hi, entropy=5)
    a = [forward(*p) for p in pairs]
    b = [backward(*p) for p in reversed(pairs)][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # additivity: W over [s2, s0] is W[s2, s1] + W[s1, s0] up to float32 rounding
    np.testing.assert_allclose(forward(sig[2], sig[0]), a[0] + a[1], atol=1e-6)


def test_brownian_noise_sampler_matches_k_diffusion(K):
    sig = schedule("simple", 8)
    t = torch.from_numpy(sig)
    ref = K.BrownianTreeNoiseSampler(torch.zeros(TREE_SHAPE), t[t > 0].min(), t.max(), seed=42)
    ours = ks.BrownianTreeNoiseSampler(TREE_SHAPE, sig[sig > 0].min(), sig.max(), seed=42)
    for i in range(len(sig) - 2):
        # the normalising sqrt of torch (MKL) is not always correctly rounded: an ulp at most
        np.testing.assert_allclose(ours(sig[i], sig[i + 1]), ref(t[i], t[i + 1]).numpy(), rtol=3e-7, atol=1e-7)


# ---- ComfyUI's flow-specific samplers against float64 re-derivations ----------------------------------

def test_euler_ancestral_is_comfys_rectified_flow_step():
    # comfy/k_diffusion/sampling.py sample_euler_ancestral_RF with eta = 1: sigma_down = s1^2/s0,
    # x <- (sd/s0) x + (1 - sd/s0) D, then x <- (a1/ad) x + noise * sqrt(s1^2 - sd^2 a1^2 / ad^2)
    # with a = 1 - sigma; the last step (s1 = 0) returns D. Noise: torch generator seeded seed + 1.
    sig = schedule("simple", 8)
    ms, _, x = start(sig)
    ours = ks.sample("euler_ancestral", model_np, x, sig, seed=99, model_sampling=ms)
    g = torch.Generator().manual_seed(100)
    ref = x.astype(np.float64)
    for s0, s1 in zip(sig[:-1].astype(np.float64), sig[1:].astype(np.float64)):
        d = gaussian_x0(ref, s0)
        if s1 == 0:
            ref = d
            continue
        sd = s1 * s1 / s0
        a1, ad = 1 - s1, 1 - sd
        ref = (sd / s0) * ref + (1 - sd / s0) * d
        ref = (a1 / ad) * ref + torch.randn(SHAPE, generator=g).numpy() * math.sqrt(s1 * s1 - sd * sd * a1 * a1 / (ad * ad))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_euler_ancestral_without_noise_is_euler():
    # eta = 0: sigma_down = sigma_next and the RF step is exactly an Euler step of the flow ODE
    sig = schedule("normal", 9)
    ms, _, x = start(sig)
    np.testing.assert_allclose(ks.sample("euler_ancestral", model_np, x, sig, seed=0, model_sampling=ms, eta=0.0),
                               ks.sample("euler", model_np, x, sig), rtol=1e-5, atol=2e-6)


def test_lcm_renoises_the_prediction():
    # sample_lcm: x <- D; if s1 > 0: x <- s1 * noise + (1 - s1) * x (CONST noise_scaling), noise seeded seed + 1
    sig = schedule("simple", 4)
    ms, _, x = start(sig)
    ours = ks.sample("lcm", model_np, x, sig, seed=7, model_sampling=ms)
    g = torch.Generator().manual_seed(8)
    ref = x.astype(np.float64)
    for s0, s1 in zip(sig[:-1].astype(np.float64), sig[1:].astype(np.float64)):
        ref = gaussian_x0(ref, s0)
        if s1 > 0:
            ref = s1 * torch.randn(SHAPE, generator=g).numpy() + (1 - s1) * ref
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def lam(s):
    """Half-log-SNR of a flow model, log((1 - sigma)/sigma) (sigma_to_half_log_snr for CONST)."""
    return math.log((1 - s) / s)


def test_dpmpp_2m_sde_uses_flow_log_snr_brownian_noise_and_the_first_sigma_offset(K):
    # sample_dpmpp_2m_sde (midpoint, eta = 1) for CONST: the tree is built over the sigmas as given,
    # then sigmas[0] = 1 becomes percent_to_sigma(1e-4) = time_snr_shift(shift, 0.9999); per step
    # h = lam(s1) - lam(s0), alpha = s1 e^lam(s1), x <- s1/s0 e^-h x + alpha (1 - e^-2h) D
    # [+ 0.5 alpha (1 - e^-2h) (D - D_old) / r, r = h_old / h] + noise s1 sqrt(1 - e^-2h)
    sig = schedule("simple", 10)
    ms, _, x = start(sig)
    rec = Recorder()
    ours = ks.sample("dpmpp_2m_sde", rec, x, sig, seed=11, model_sampling=ms)
    first = 5 * 0.9999 / (1 + 4 * 0.9999)
    assert rec.sigmas[0] == pytest.approx(first, rel=1e-7) and rec.sigmas[1:] == [float(s) for s in sig[1:-1]]

    t = torch.from_numpy(sig)
    noise = K.BrownianTreeNoiseSampler(torch.zeros(SHAPE), t[t > 0].min(), t.max(), seed=11)
    s = sig.astype(np.float64)
    s[0] = float(np.float32(first))
    ref, old, h_old = x.astype(np.float64), None, None
    for i in range(len(s) - 1):
        d = gaussian_x0(ref, s[i])
        if s[i + 1] == 0:
            ref = d
            break
        h = lam(s[i + 1]) - lam(s[i])
        alpha = s[i + 1] * math.exp(lam(s[i + 1]))
        ref = s[i + 1] / s[i] * math.exp(-h) * ref + alpha * -math.expm1(-2 * h) * d
        if old is not None:
            ref = ref + 0.5 * alpha * -math.expm1(-2 * h) * (h / h_old) * (d - old)
        w = noise(torch.tensor(np.float32(s[i])), torch.tensor(np.float32(s[i + 1]))).numpy()
        ref = ref + w * s[i + 1] * math.sqrt(-math.expm1(-2 * h))
        old, h_old = d, h
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-5)


def test_dpmpp_sde_is_two_stage_in_flow_log_snr(K):
    # sample_dpmpp_sde (r = 1/2, eta = 1) for CONST, with the same first-sigma offset; the midpoint is
    # lam_m = (lam0 + lam1)/2, sigma_m = sigmoid(-lam_m), and each stage is an ancestral exponential step
    # in the "VE" variable e^-lam with Brownian noise between the stage's sigmas
    sig = schedule("simple", 6)
    ms, _, x = start(sig)
    rec = Recorder()
    ours = ks.sample("dpmpp_sde", rec, x, sig, seed=3, model_sampling=ms)
    t = torch.from_numpy(sig)
    noise = K.BrownianTreeNoiseSampler(torch.zeros(SHAPE), t[t > 0].min(), t.max(), seed=3)
    s = sig.astype(np.float64)
    s[0] = float(np.float32(5 * 0.9999 / (1 + 4 * 0.9999)))

    def ancestral(f, to):
        up = min(to, math.sqrt(to * to * (f * f - to * to) / (f * f)))
        return math.sqrt(to * to - up * up), up

    def w(a, b):
        return noise(torch.tensor(np.float32(a)), torch.tensor(np.float32(b))).numpy()

    ref = x.astype(np.float64)
    seen = []
    for i in range(len(s) - 1):
        seen.append(s[i])
        d = gaussian_x0(ref, s[i])
        if s[i + 1] == 0:
            ref = d
            break
        l0, l1 = lam(s[i]), lam(s[i + 1])
        lm = (l0 + l1) / 2
        sm = 1 / (1 + math.exp(lm))
        a0, am, a1 = s[i] * math.exp(l0), sm * math.exp(lm), s[i + 1] * math.exp(l1)
        sd, su = ancestral(math.exp(-l0), math.exp(-lm))
        h_ = -math.log(sd) - l0
        x2 = am / a0 * math.exp(-h_) * ref - am * math.expm1(-h_) * d + am * w(s[i], np.float32(sm)) * su
        seen.append(sm)
        d2 = gaussian_x0(x2, sm)
        sd, su = ancestral(math.exp(-l0), math.exp(-l1))
        h_ = -math.log(sd) - l0
        ref = a1 / a0 * math.exp(-h_) * ref - a1 * math.expm1(-h_) * d2 + a1 * w(s[i], s[i + 1]) * su
    np.testing.assert_allclose(rec.sigmas, seen, rtol=2e-6)
    np.testing.assert_allclose(ours, ref, rtol=3e-5, atol=3e-5)


def test_res_multistep():
    # res_multistep (eta = 0): first step and steps to 0 are Euler; otherwise in t = -log(sigma),
    # h = t1 - t0, c2 = (t_prev - t0)/h, phi1(z) = (e^z - 1)/z, phi2(z) = (phi1(z) - 1)/z,
    # x <- e^-h x + h ((phi1(-h) - phi2(-h)/c2) D + (phi2(-h)/c2) D_old)
    sig = schedule("simple", 9)
    _, _, x = start(sig)
    ours = ks.sample("res_multistep", model_np, x, sig)
    s = sig.astype(np.float64)
    ref, old = x.astype(np.float64), None
    for i in range(len(s) - 1):
        d = gaussian_x0(ref, s[i])
        if s[i + 1] == 0 or old is None:
            ref = ref + (ref - d) / s[i] * (s[i + 1] - s[i])
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            c2 = (math.log(s[i]) - math.log(s[i - 1])) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            ref = math.exp(-h) * ref + h * ((phi1 - phi2 / c2) * d + (phi2 / c2) * old)
        old = d
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=2e-6)


# ---- UniPC against diffusers -----------------------------------------------------------------------------

def diffusers_unipc(sig, x, variant):
    """diffusers' UniPC (order 3, data prediction, lower order at the end) on ComfyUI's VP-from-sigma
    view: alpha = 1/sqrt(1+sigma^2), sample = alpha * x, and a final sigma of 0.001 in place of 0."""
    from diffusers import UniPCMultistepScheduler

    sig = sig.astype(np.float64)
    if sig[-1] == 0:
        sig[-1] = 0.001
    sched = UniPCMultistepScheduler(solver_order=3, prediction_type="sample", predict_x0=True,
                                    solver_type=variant, lower_order_final=True)
    sched.set_timesteps(len(sig) - 1)
    sched.sigmas = torch.tensor(sig, dtype=torch.float64)
    sample = torch.tensor(x.astype(np.float64) / math.sqrt(1 + sig[0] ** 2))
    for i in range(len(sig) - 1):
        d = gaussian_x0(sample.numpy() * math.sqrt(1 + sig[i] ** 2), sig[i])
        sample = sched.step(torch.tensor(d), sched.timesteps[i], sample).prev_sample
    return sample.numpy() * math.sqrt(1 + sig[-1] ** 2)


@pytest.mark.parametrize("variant,steps", [("bh1", 2), ("bh1", 3), ("bh1", 15), ("bh2", 6)])
def test_uni_pc_matches_diffusers(variant, steps, monkeypatch):
    name = "uni_pc" if variant == "bh1" else "uni_pc_bh2"
    sig = schedule("simple", steps, sampler=name)
    _, _, x = start(sig)
    ref = diffusers_unipc(sig, x, variant)
    # ComfyUI's float32 VP conversion cancels at sigma = 0.001 (1 - exp(2 log alpha)), so the float32
    # result sits ~1e-4 from the exact one ...
    ours = ks.sample(name, model_np, x, sig)
    np.testing.assert_allclose(ours, ref, rtol=3e-4, atol=3e-4)
    # ... and the same algorithm evaluated in float64 agrees with diffusers to round-off
    monkeypatch.setattr(ks, "F", np.float64)
    ours64 = ks.sample(name, lambda x, s: gaussian_x0(x, s), x.astype(np.float64), sig)
    np.testing.assert_allclose(ours64, ref, rtol=1e-7, atol=1e-7)


def test_uni_pc_comfy_quirks():
    ms = S.ModelSamplingSD3(5.0)
    noise = randn(SHAPE, 4)
    latent = np.zeros(SHAPE, np.float32)
    # one step: ComfyUI's order min(3, len - 2) = 0 runs no update at all -- the input, VP-scaled by
    # 1/sqrt(1 + sigma0^2) and divided by alpha(0.001), comes back (then / (1 - 0.001))
    sig = S.ksampler_sigmas(ms, "simple", 1, "uni_pc")
    assert sig.tolist() == [1.0, 0.0]
    out = ks.run_ksampler("uni_pc", model_np, noise, latent, sig, ms)
    np.testing.assert_allclose(out, noise / math.sqrt(2) * math.sqrt(1 + 1e-6) / 0.999, rtol=1e-6)
    # the final sigma 0.001 also reaches inverse_noise_scaling: the result is divided by 0.999
    sig = S.ksampler_sigmas(ms, "simple", 6, "uni_pc")
    x = ms.noise_scaling(sig[0], noise, latent)
    np.testing.assert_allclose(ks.run_ksampler("uni_pc", model_np, noise, latent, sig, ms),
                               ks.sample("uni_pc", model_np, x, sig) / np.float32(0.999), rtol=1e-6)


# ---- the pieces around the sampler ----------------------------------------------------------------------

def test_cfg_and_flow_denoiser():
    rng = np.random.default_rng(1)
    cond, uncond, x, v = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(4))
    # comfy/samplers.py cfg_function: uncond + (cond - uncond) * scale
    np.testing.assert_allclose(ks.cfg_denoised(cond, uncond, 5.0), 5 * cond.astype(np.float64) - 4 * uncond,
                               rtol=1e-5, atol=1e-5)
    assert np.array_equal(ks.cfg_denoised(cond, None, 1.0), cond)
    ms = S.ModelSamplingSD3(5.0)
    seen = {}

    def velocity(x_in, sigma, timestep):
        seen.update(sigma=sigma, timestep=timestep)
        return v

    den = ks.flow_denoiser(velocity, ms)(x, np.float32(0.6))
    np.testing.assert_allclose(den, x - 0.6 * v.astype(np.float64), atol=1e-6)
    assert seen["timestep"] == np.float32(600.0)


def test_run_ksampler_noises_the_latent_and_handles_empty_sigmas():
    ms = S.ModelSamplingSD3(5.0)
    rng = np.random.default_rng(2)
    latent = rng.standard_normal(SHAPE).astype(np.float32)
    noise = randn(SHAPE, 8)
    assert np.array_equal(ks.run_ksampler("euler", model_np, noise, latent, np.zeros(0, np.float32), ms), latent)
    sig = S.ksampler_sigmas(ms, "simple", 10, "euler", denoise=0.4)    # starts part-way down
    rec = Recorder(lambda x, s: x)                                    # identity denoiser: euler keeps x
    out = ks.run_ksampler("euler", rec, noise, latent, sig, ms)
    s0 = float(sig[0])
    np.testing.assert_allclose(out, s0 * noise.astype(np.float64) + (1 - s0) * latent, rtol=1e-5, atol=1e-6)
    assert rec.sigmas == [float(s) for s in sig[:-1]]


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "res_multistep", "uni_pc", "uni_pc_bh2"])
def test_deterministic_samplers_converge_to_the_flow_solution(name):
    # For x0 ~ N(MU, C^2) the probability-flow ODE maps the starting noise n to MU + C n exactly
    # (no tanh term here); error must fall as steps grow.
    ms = S.ModelSamplingSD3(3.0)
    noise = randn((2048,), 5)

    def exact_model(x, sigma):
        s = np.float64(sigma)
        a = 1 - s
        return (MU + a * C * C / (a * a * C * C + s * s) * (x.astype(np.float64) - a * MU)).astype(np.float32)

    errs = []
    for steps in (10, 40):
        sig = S.ksampler_sigmas(ms, "beta", steps, name)
        out = ks.run_ksampler(name, exact_model, noise, np.zeros_like(noise), sig, ms)
        errs.append(np.abs(out - (MU + C * noise)).mean())
    assert errs[1] < errs[0] / 2 and errs[1] < 0.03, errs


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_sde"])
def test_sde_samplers_reach_the_data_distribution(name):
    # Whatever the path, the SDE samplers with the exact denoiser must end near x0 ~ N(MU, C^2)
    # (1024 samples: a loose check of the noise scale, on top of the exact references above).
    ms = S.ModelSamplingSD3(3.0)
    noise = randn((1024,), 6)

    def exact_model(x, sigma):
        s = np.float64(sigma)
        a = 1 - s
        return (MU + a * C * C / (a * a * C * C + s * s) * (x.astype(np.float64) - a * MU)).astype(np.float32)

    sig = S.ksampler_sigmas(ms, "simple", 10, name)
    out = ks.run_ksampler(name, exact_model, noise, np.zeros_like(noise), sig, ms, seed=21).astype(np.float64)
    assert abs(out.mean() - MU) < 0.1 and abs(out.std() - C) < 0.1, (out.mean(), out.std())
    # the seed drives the noise: another seed, another sample
    other = ks.run_ksampler(name, exact_model, noise, np.zeros_like(noise), sig, ms, seed=22)
    assert np.abs(other - out).max() > 0.1


def test_callbacks_and_errors():
    sig = schedule("simple", 5)
    ms, _, x = start(sig)
    seen = []
    ks.sample("dpmpp_2m", model_np, x, sig, callback=lambda i, d, xx, n: seen.append((i, n, d.shape)))
    assert seen == [(i, 5, SHAPE) for i in range(5)]
    seen.clear()
    ks.sample("uni_pc", model_np, x, schedule("simple", 5, sampler="uni_pc"),
              callback=lambda i, d, xx, n: seen.append(i))
    assert seen == list(range(5))
    with pytest.raises(ValueError, match="unknown sampler"):
        ks.sample("dpm_fast", model_np, x, sig)
    with pytest.raises(ValueError, match="seed"):
        ks.sample("euler_ancestral", model_np, x, sig, model_sampling=ms)
    with pytest.raises(ValueError, match="model sampling"):
        ks.sample("dpmpp_2m_sde", model_np, x, sig, seed=1)
