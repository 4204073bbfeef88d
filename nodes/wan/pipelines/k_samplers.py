"""ComfyUI's samplers for flow (CONST) models such as Wan, in numpy.

A sampler integrates from the first sigma to the last, calling `model(x, sigma) -> denoised`, the
model's x0 prediction (ComfyUI's "denoised": for Wan, x - sigma * v after classifier-free guidance,
see `cfg_denoised` and `ModelSamplingFlow.calculate_denoised`). Arrays are float32.

Fidelity. Each sampler follows ComfyUI's code path for CONST models (comfy/k_diffusion/sampling.py,
comfy/extra_samplers/uni_pc.py, comfy/samplers.py), not vanilla k-diffusion where they differ: the
rectified-flow ancestral step for euler_ancestral, the logit half-log-SNR and the first-sigma offset of
the SDE samplers, uni_pc's VP-from-sigma conversion and its final sigma of 0.001. ComfyUI does its
per-step scalar arithmetic on float32 0-d tensors; that is mirrored with float32 scalars, so with the
same denoiser the results agree with ComfyUI to float32 rounding. euler, heun, lcm and ddim use only
+ - * / and are bit-identical; elsewhere torch's CPU float32 log / exp / sqrt (MKL, not always
correctly rounded) can put a coefficient an ulp away from the correctly rounded one used here.
uni_pc's float32 VP conversion is ill-conditioned at sigma = 0.001, which makes its last step
depend on such ulps: expect ~1e-4 there.

Noise. The initial latent noise is drawn on the CPU by ComfyUI on every device (torch_randn), and
the deterministic samplers (euler, heun, dpmpp_2m, res_multistep, ddim, uni_pc, uni_pc_bh2) draw
nothing else, so they are seed-equal to ComfyUI anywhere. dpmpp_sde and dpmpp_2m_sde draw from
torchsde's Brownian tree seeded with `seed`, which ComfyUI builds on the CPU whatever the device
(`BrownianTreeNoiseSampler`, a port of it): seed-equal anywhere too. The ancestral ones (euler_ancestral,
lcm, res_multistep with eta > 0) draw from a generator on the sampling device: on the CPU a torch
generator seeded with `seed + 1` (`CPUNoiseSampler`, reproduced here); on a CUDA GPU the Philox
generator seeded with `seed`, which is not reproduced -- those three are seed-equal to ComfyUI run on
the CPU only.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import numpy as np

from .sigmas import ModelSamplingFlow
from .torch_randn import TorchCPUGenerator

F = np.float32
Denoiser = Callable[[np.ndarray, np.float32], np.ndarray]
Callback = Callable[[int, np.ndarray, np.ndarray, int], None]   # (step, denoised, x, total_steps)

SAMPLER_NAMES = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde",
                 "res_multistep", "lcm", "ddim", "uni_pc", "uni_pc_bh2")
# Samplers whose result ComfyUI rescales with a last sigma of 0.001 instead of 0 (see run_ksampler).
_FINAL_SIGMA_0001 = ("uni_pc", "uni_pc_bh2")


# ---- float32 scalar arithmetic as torch does it on 0-d tensors -----------------------------------------
# (numpy promotes np.float32 combined with a Python float to float64, so every constant is wrapped.)

def _log(x) -> np.float32:
    return F(math.log(float(x)))


def _exp(x) -> np.float32:
    return F(math.exp(float(x)))


def _expm1(x) -> np.float32:
    return F(math.expm1(float(x)))


def _sqrt(x) -> np.float32:
    return F(math.sqrt(float(x)))


def _half_log_snr(sigma) -> np.float32:
    """-logit(sigma) = log((1 - sigma) / sigma) for a flow model (ComfyUI `sigma_to_half_log_snr`)."""
    s = F(sigma)
    return -_log(s / (F(1.0) - s))


def _sigma_of_half_log_snr(lam) -> np.float32:
    """sigmoid(-lambda) (ComfyUI `half_log_snr_to_sigma` for CONST)."""
    return F(1.0) / (F(1.0) + _exp(lam))


def _ancestral_step(sigma_from, sigma_to, eta: float):
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up) for a VE-style noise level."""
    if not eta:
        return F(sigma_to), F(0.0)
    f, t = F(sigma_from), F(sigma_to)
    up = F(eta) * _sqrt(t * t * (f * f - t * t) / (f * f))
    up = min(t, up)
    return _sqrt(t * t - up * up), up


# ---- guidance and the flow parameterisation -----------------------------------------------------------

def cfg_denoised(cond: np.ndarray, uncond: np.ndarray, cfg: float) -> np.ndarray:
    """ComfyUI's cfg_function: uncond + (cond - uncond) * cfg (float32).

    ComfyUI skips the unconditional pass when cfg == 1 (math.isclose): then the result is just
    cond * cfg -- pass uncond=None for that.
    """
    if uncond is None:
        return cond * F(cfg)
    return uncond + (cond - uncond) * F(cfg)


def flow_denoiser(velocity: Callable[[np.ndarray, np.float32, np.float32], np.ndarray],
                  model_sampling: ModelSamplingFlow) -> Denoiser:
    """Wrap `velocity(x, sigma, timestep) -> v` (Wan's output, guidance already applied or not) into
    the sampler's `model(x, sigma) -> denoised` = x - v * sigma; timestep = sigma * 1000."""
    def model(x, sigma):
        return model_sampling.calculate_denoised(sigma, velocity(x, F(sigma), model_sampling.timestep(sigma)), x)
    return model


# ---- noise samplers ----------------------------------------------------------------------------------

class CPUNoiseSampler:
    """ComfyUI's default_noise_sampler on the CPU: a torch generator seeded with seed + 1, one
    randn of the latent's shape per call."""

    def __init__(self, shape, seed: int):
        if seed is None:
            raise ValueError("a seed is needed: ComfyUI without one draws from torch's global generator")
        self.shape = tuple(shape)
        self.generator = TorchCPUGenerator(int(seed) + 1)

    def __call__(self, sigma, sigma_next) -> np.ndarray:
        return self.generator.randn(self.shape)


class _Node:
    __slots__ = ("start", "end", "parent", "is_left", "mid", "key", "depth", "w_seed", "left", "right")

    def __init__(self, start, end, parent, is_left):
        self.start, self.end = round(start, 6), round(end, 6)   # torchsde quantises times to tol = 1e-6
        self.parent, self.is_left = parent, is_left
        self.mid = None


class BrownianTree:
    """torchsde's BrownianTree (a BrownianInterval with tol=1e-6, pool_size=24, halfway_tree=True,
    no Levy area) in numpy, for W(ta, tb) of a float32 Brownian motion of `shape`.

    The motion over [t0, t1] is drawn first; every interval is then split at its (rounded) midpoint
    with a Brownian bridge whose normal draws come from a torch generator seeded by
    numpy.random.SeedSequence(entropy, spawn_key=(node key, depth)). The sample path therefore
    depends only on `entropy`, never on the order of queries; a small LRU cache of node increments
    (torchsde keeps 45) bounds memory, and anything evicted is recomputed identically.
    """

    def __init__(self, shape, t0: float, t1: float, entropy: int, pool_size: int = 24, cache_size: int = 45):
        self.shape = tuple(shape)
        self.entropy = int(entropy)
        self.pool_size = pool_size
        t0, t1 = float(t0), float(t1)
        self._gen = TorchCPUGenerator(0)
        self.top = _Node(t0, t1, None, None)
        self.top.key, self.top.depth = 0, 0
        w_seed = np.random.SeedSequence(entropy=self.entropy, pool_size=pool_size).generate_state(3)[0]
        self._top_w = self._randn(w_seed) * F(math.sqrt(t1 - t0))
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def _randn(self, seed) -> np.ndarray:
        # torchsde's _randn: a fresh torch.Generator().manual_seed(seed) per draw (one generator,
        # re-seeded, is the same thing and cheaper)
        return self._gen.manual_seed(int(seed)).randn(self.shape)

    def _split(self, node: _Node, target: float):
        """Split at halfway points down to the one that equals `target` (torchsde's halfway tree)."""
        while True:
            mid = round(0.5 * (node.end + node.start), 6)
            node.mid = mid
            if node.parent is not None:
                node.key = 2 * node.parent.key + (0 if node.is_left else 1)
                node.depth = node.parent.depth + 1
            seq = np.random.SeedSequence(entropy=self.entropy, spawn_key=(node.key, node.depth),
                                         pool_size=self.pool_size)
            node.w_seed = seq.generate_state(4)[0]
            node.left = _Node(node.start, mid, node, True)
            node.right = _Node(mid, node.end, node, False)
            if target > mid:
                node = node.right
            elif target < mid:
                node = node.left
            else:
                return

    def _pieces(self, node: _Node, ta: float, tb: float, out: list):
        """The tree's intervals that tile [ta, tb], left to right, creating them as needed."""
        if ta == node.start and tb == node.end:
            out.append(node)
            return
        if node.mid is None:
            self._split(node, tb if ta == node.start else ta)
        if tb <= node.mid:
            self._pieces(node.left, ta, tb, out)
        elif ta >= node.mid:
            self._pieces(node.right, ta, tb, out)
        else:
            self._pieces(node.left, ta, node.mid, out)
            self._pieces(node.right, node.mid, tb, out)

    def _increment(self, node: _Node) -> np.ndarray:
        if node is self.top:
            return self._top_w
        if node in self._cache:
            self._cache.move_to_end(node)
            return self._cache[node]
        p = node.parent
        w = self._increment(p)
        # Brownian bridge at the parent's midpoint; float32 products as torch evaluates them
        h_rec = 1 / (p.end - p.start)
        left_diff, right_diff = p.mid - p.start, p.end - p.mid
        mean = w * F(left_diff) * F(h_rec)
        left_w = mean + F(math.sqrt(left_diff * right_diff * h_rec)) * self._randn(p.w_seed)
        out = left_w if node.is_left else w - left_w
        self._cache[node] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def __call__(self, ta: float, tb: float) -> np.ndarray:
        ta, tb = float(ta), float(tb)
        if ta == tb:
            return np.zeros(self.shape, np.float32)
        ta = min(max(ta, self.top.start), self.top.end)
        tb = min(max(tb, self.top.start), self.top.end)
        ta, tb = round(ta, 6), round(tb, 6)
        if ta == tb:
            return np.zeros(self.shape, np.float32)
        pieces = []
        self._pieces(self.top, ta, tb, pieces)
        w = self._increment(pieces[0])
        for piece in pieces[1:]:
            w = w + self._increment(piece)
        return w


class BrownianTreeNoiseSampler:
    """ComfyUI's BrownianTreeNoiseSampler (cpu=True): normalised increments of one Brownian tree
    over [sigma_min, sigma_max], W(sigma_next, sigma) / sqrt(|sigma_next - sigma|)."""

    def __init__(self, shape, sigma_min, sigma_max, seed: int):
        if seed is None:
            raise ValueError("a seed is needed: ComfyUI without one draws a random tree")
        lo, hi = F(sigma_min), F(sigma_max)
        self._flip = F(1.0) if lo < hi else F(-1.0)
        lo, hi = min(lo, hi), max(lo, hi)
        self.tree = BrownianTree(shape, lo, hi, entropy=seed)

    def __call__(self, sigma, sigma_next) -> np.ndarray:
        t0, t1 = F(sigma), F(sigma_next)
        sign = F(1.0) if t0 < t1 else F(-1.0)
        w = self.tree(min(t0, t1), max(t0, t1)) * (self._flip * sign)
        return w / np.sqrt(np.abs(t1 - t0))


# ---- the samplers ------------------------------------------------------------------------------------

def _notify(callback, i, denoised, x, total):
    if callback is not None:
        callback(i, denoised, x, total)


def _to_d(x, sigma, denoised):
    return (x - denoised) / F(sigma)


def sample_euler(model, x, sigmas, *, callback=None, **_):
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, sigmas[i])
        _notify(callback, i, denoised, x, total)
        x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_heun(model, x, sigmas, *, callback=None, **_):
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, sigmas[i])
        d = _to_d(x, sigmas[i], denoised)
        _notify(callback, i, denoised, x, total)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / F(2.0) * dt
    return x


def sample_euler_ancestral(model, x, sigmas, *, noise_sampler, eta=1.0, s_noise=1.0, callback=None, **_):
    """ComfyUI's sample_euler_ancestral_RF (what euler_ancestral runs for CONST models): step down
    to sigma_down = sigma_next * (1 + (sigma_next/sigma - 1) * eta) along the flow, then rescale
    the clean part to sigma_next's and add the missing noise."""
    total = len(sigmas) - 1
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        _notify(callback, i, denoised, x, total)
        if s_next == 0:
            x = denoised
            continue
        sigma_down = s_next * (F(1.0) + (s_next / s - F(1.0)) * F(eta))
        alpha_next, alpha_down = F(1.0) - s_next, F(1.0) - sigma_down
        renoise = _sqrt(s_next * s_next - sigma_down * sigma_down * (alpha_next * alpha_next)
                        / (alpha_down * alpha_down))
        ratio = sigma_down / s
        x = ratio * x + (F(1.0) - ratio) * denoised
        if eta > 0:
            x = (alpha_next / alpha_down) * x + noise_sampler(s, s_next) * F(s_noise) * renoise
    return x


def sample_lcm(model, x, sigmas, *, noise_sampler, model_sampling, callback=None, **_):
    """Jump to the prediction, then re-noise it to the next sigma with fresh noise."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, sigmas[i])
        _notify(callback, i, denoised, x, total)
        x = denoised
        if sigmas[i + 1] > 0:
            x = model_sampling.noise_scaling(sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1]), x)
    return x


def sample_dpmpp_2m(model, x, sigmas, *, callback=None, **_):
    """DPM-Solver++(2M) in t = -log(sigma) (ComfyUI uses k-diffusion's unchanged)."""
    total = len(sigmas) - 1
    old_denoised = None
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        _notify(callback, i, denoised, x, total)
        if s_next == 0:
            x = denoised                       # exp(-inf) = 0: the step lands on the prediction
        else:
            t, t_next = -_log(s), -_log(s_next)
            h = t_next - t
            d = denoised
            if old_denoised is not None:
                r = (t + _log(sigmas[i - 1])) / h
                d = (F(1.0) + F(1.0) / (F(2.0) * r)) * denoised - (F(1.0) / (F(2.0) * r)) * old_denoised
            x = (_exp(-t_next) / _exp(-t)) * x - _expm1(-h) * d
        old_denoised = denoised
    return x


def _sde_sigmas(sigmas, model_sampling):
    """offset_first_sigma_for_snr: a first sigma of 1 (infinite log-SNR) becomes
    percent_to_sigma(1e-4) for flow models."""
    sigmas = np.array(sigmas, dtype=np.float32)
    if len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas[0] = model_sampling.percent_to_sigma(1e-4)
    return sigmas


def _brownian_for(x, sigmas, seed):
    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(x.shape, positive.min(), sigmas.max(), seed)


def sample_dpmpp_2m_sde(model, x, sigmas, *, model_sampling, seed=None, noise_sampler=None, eta=1.0,
                        s_noise=1.0, solver_type="midpoint", callback=None, **_):
    """DPM-Solver++(2M) SDE in the flow half-log-SNR lambda = log((1 - sigma) / sigma)."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("midpoint", "heun"):
        raise ValueError("solver_type must be 'midpoint' or 'heun'")
    sigmas = np.asarray(sigmas, dtype=np.float32)
    noise_sampler = noise_sampler or _brownian_for(x, sigmas, seed)   # built before the offset
    sigmas = _sde_sigmas(sigmas, model_sampling)
    s_noise = s_noise * model_sampling.noise_scale
    total = len(sigmas) - 1
    old_denoised, h, h_last = None, None, None
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        _notify(callback, i, denoised, x, total)
        if s_next == 0:
            x = denoised
        else:
            lam_s, lam_t = _half_log_snr(s), _half_log_snr(s_next)
            h = lam_t - lam_s
            h_eta = h * F(eta + 1)
            alpha_t = s_next * _exp(lam_t)
            phi = -_expm1(-h_eta)
            x = (s_next / s * _exp(-h * F(eta))) * x + (alpha_t * phi) * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (alpha_t * (phi / -h_eta + F(1.0)) * (F(1.0) / r)) * (denoised - old_denoised)
                else:
                    x = x + (F(0.5) * alpha_t * phi * (F(1.0) / r)) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(s, s_next) * s_next * _sqrt(-_expm1(F(-2.0) * h * F(eta))) * F(s_noise)
        old_denoised, h_last = denoised, h
    return x


def sample_dpmpp_sde(model, x, sigmas, *, model_sampling, seed=None, noise_sampler=None, eta=1.0,
                     s_noise=1.0, r=0.5, callback=None, **_):
    """DPM-Solver++ (stochastic, two model calls per step) in the flow half-log-SNR."""
    if len(sigmas) <= 1:
        return x
    sigmas = np.asarray(sigmas, dtype=np.float32)
    noise_sampler = noise_sampler or _brownian_for(x, sigmas, seed)
    sigmas = _sde_sigmas(sigmas, model_sampling)
    s_noise = s_noise * model_sampling.noise_scale
    fac = F(1.0) / (F(2.0) * F(r))
    total = len(sigmas) - 1
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        _notify(callback, i, denoised, x, total)
        if s_next == 0:
            x = denoised
            continue
        lam_s, lam_t = _half_log_snr(s), _half_log_snr(s_next)
        h = lam_t - lam_s
        lam_mid = lam_s + F(r) * h
        s_mid = _sigma_of_half_log_snr(lam_mid)
        alpha_s = s * _exp(lam_s)
        alpha_mid = s_mid * _exp(lam_mid)
        alpha_t = s_next * _exp(lam_t)
        # step 1: to the midpoint in lambda
        sd, su = _ancestral_step(_exp(-lam_s), _exp(-lam_mid), eta)
        h_ = -_log(sd) - lam_s
        x_2 = ((alpha_mid / alpha_s) * _exp(-h_)) * x - (alpha_mid * _expm1(-h_)) * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_mid * noise_sampler(s, s_mid) * F(s_noise) * su
        denoised_2 = model(x_2, s_mid)
        # step 2: the full step with the midpoint's prediction mixed in
        sd, su = _ancestral_step(_exp(-lam_s), _exp(-lam_t), eta)
        h_ = -_log(sd) - lam_s
        denoised_d = (F(1.0) - fac) * denoised + fac * denoised_2
        x = ((alpha_t / alpha_s) * _exp(-h_)) * x - (alpha_t * _expm1(-h_)) * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(s, s_next) * F(s_noise) * su
    return x


def sample_res_multistep(model, x, sigmas, *, noise_sampler=None, eta=0.0, s_noise=1.0, model_sampling=None,
                         callback=None, **_):
    """RES second-order multistep (arXiv 2308.02157) in t = -log(sigma); eta > 0 is
    res_multistep_ancestral."""
    if model_sampling is not None:
        s_noise = s_noise * model_sampling.noise_scale
    total = len(sigmas) - 1
    old_denoised, old_sigma_down = None, None
    phi1 = lambda t: _expm1(t) / t                      # noqa: E731
    phi2 = lambda t: (phi1(t) - F(1.0)) / t             # noqa: E731
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        sigma_down, sigma_up = _ancestral_step(s, s_next, eta)
        _notify(callback, i, denoised, x, total)
        if sigma_down == 0 or old_denoised is None:
            x = x + _to_d(x, s, denoised) * (sigma_down - s)
        else:
            t, t_old, t_next, t_prev = -_log(s), -_log(old_sigma_down), -_log(sigma_down), -_log(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            with np.errstate(divide="ignore", invalid="ignore"):
                b1 = np.nan_to_num(phi1(-h) - phi2(-h) / c2, nan=0.0)
                b2 = np.nan_to_num(phi2(-h) / c2, nan=0.0)
            x = _exp(-h) * x + h * (F(b1) * denoised + F(b2) * old_denoised)
        if s_next > 0 and sigma_up > 0:     # sigma_up == 0 (eta = 0): ComfyUI adds 0 * noise
            x = x + noise_sampler(s, s_next) * F(s_noise) * sigma_up
        old_denoised, old_sigma_down = denoised, sigma_down
    return x


# ---- UniPC (ComfyUI's extra_samplers/uni_pc.py, B(h) variants) -------------------------------------------
# ComfyUI runs UniPC on a VP process derived from sigma: alpha = 1/sqrt(1 + sigma^2),
# std = sigma/sqrt(1 + sigma^2), with x scaled by alpha -- the same ODE the other samplers solve,
# discretised in lambda = log(alpha/std). Its float32 formulas lose precision at small sigma
# (1 - exp(2 log alpha) cancels), and reproducing ComfyUI means keeping them.

def _vp_log_alpha(s) -> np.float32:
    s = F(s)
    return F(0.5) * _log(F(1.0) / (s * s + F(1.0)))


def _vp_std(s) -> np.float32:
    return _sqrt(F(1.0) - _exp(F(2.0) * _vp_log_alpha(s)))


def _vp_lambda(s) -> np.float32:
    la = _vp_log_alpha(s)
    return la - F(0.5) * _log(F(1.0) - _exp(F(2.0) * la))


def _unipc_x0(model, x, t):
    """UniPC's data prediction: the denoiser seen through ComfyUI's eps conversion."""
    t = F(t)
    scaled = x * _sqrt(t * t + F(1.0))
    eps = (scaled - model(scaled, t)) / t
    return (x - _vp_std(t) * eps) / _exp(_vp_log_alpha(t))


def _unipc_update(model, x, model_prev, t_prev, t, order, variant, use_corrector):
    """One multistep UniPC update to t: predictor UniP-p, corrector UniC-p (multistep_uni_pc_bh_update)."""
    lam_prev0, lam_t = _vp_lambda(t_prev[-1]), _vp_lambda(t)
    m0 = model_prev[-1]
    sigma_prev0, sigma_t = _vp_std(t_prev[-1]), _vp_std(t)
    alpha_t = _exp(_vp_log_alpha(t))
    h = lam_t - lam_prev0

    rks, d1s = [], []
    for i in range(1, order):
        rk = (_vp_lambda(t_prev[-(i + 1)]) - lam_prev0) / h
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - m0) / rk)
    rks.append(F(1.0))
    rks = np.array(rks, dtype=np.float32)

    hh = -h
    h_phi_1 = _expm1(hh)
    b_h = hh if variant == "bh1" else _expm1(hh)
    # ComfyUI evaluates the b recurrence in float64 (it cancels badly in float32) from the float32 hh
    hh64 = float(hh)
    h_phi_k = math.expm1(hh64) / hh64 - 1
    b_h64 = hh64 if variant == "bh1" else math.expm1(hh64)
    R, b, fact = [], [], 1
    for i in range(1, order + 1):
        R.append(rks.astype(np.float64) ** (i - 1))
        b.append(h_phi_k * fact / b_h64)
        fact *= i + 1
        h_phi_k = h_phi_k / hh64 - 1 / fact
    R = np.array(R, dtype=np.float32).astype(np.float64)
    b = np.array(b, dtype=np.float32).astype(np.float64)

    x_t_ = (sigma_t / sigma_prev0) * x - (alpha_t * h_phi_1) * m0
    pred_res = 0
    if d1s:
        rhos_p = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        pred_res = sum(d * F(c) for d, c in zip(d1s, rhos_p))
    x_t = x_t_ - (alpha_t * b_h) * pred_res
    model_t = None
    if use_corrector:
        rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        model_t = _unipc_x0(model, x_t, t)
        corr_res = sum(d * F(c) for d, c in zip(d1s, rhos_c[:-1])) if d1s else 0
        x_t = x_t_ - (alpha_t * b_h) * (corr_res + F(rhos_c[-1]) * (model_t - m0))
    return x_t, model_t


def sample_uni_pc(model, x, sigmas, *, variant="bh1", callback=None, **_):
    """ComfyUI's sample_unipc: multistep UniPC of order min(3, steps - 1), lower order at the end;
    a last sigma of 0 is replaced by 0.001 and the result divided by that sigma's alpha."""
    ts = np.array(sigmas, dtype=np.float32)
    if ts[-1] == 0:
        ts[-1] = F(0.001)
    x = x / _sqrt(F(1.0) + ts[0] * ts[0])
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)
    model_prev, t_prev = [], []
    for step_index in range(steps):
        if step_index == 0:
            model_prev, t_prev = [_unipc_x0(model, x, ts[0])], [ts[0]]
        elif step_index < order:
            x, model_x = _unipc_update(model, x, model_prev, t_prev, ts[step_index], step_index, variant, True)
            if model_x is None:
                model_x = _unipc_x0(model, x, ts[step_index])
            model_prev.append(model_x)
            t_prev.append(ts[step_index])
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                step_order = min(order, steps + 1 - step)
                x, model_x = _unipc_update(model, x, model_prev, t_prev, ts[step], step_order, variant,
                                           use_corrector=step != steps)
                model_prev = model_prev[1:] + model_prev[-1:]
                t_prev = t_prev[1:] + [ts[step]]
                if step < steps:
                    model_prev[-1] = model_x if model_x is not None else _unipc_x0(model, x, ts[step])
        _notify(callback, step_index, model_prev[-1], x, steps)
    return x / _exp(_vp_log_alpha(ts[-1]))


# ---- dispatch ----------------------------------------------------------------------------------------

def sample(name: str, model: Denoiser, x: np.ndarray, sigmas, *, seed: int | None = None,
           model_sampling: ModelSamplingFlow | None = None, noise_sampler=None,
           callback: Callback | None = None, **options) -> np.ndarray:
    """Run ComfyUI sampler `name` from x (already noised to sigmas[0]) through `sigmas`.

    `seed` is the KSampler seed: the ancestral samplers derive their CPU noise from it as ComfyUI
    does (or pass `noise_sampler`). `model_sampling` is needed by lcm and the SDE samplers.
    `options` are the sampler's own (eta, s_noise, solver_type, r).
    """
    sigmas = np.asarray(sigmas, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    if name in ("dpmpp_2m_sde", "dpmpp_sde", "lcm", "euler_ancestral") and model_sampling is None:
        raise ValueError(f"{name} needs the model sampling (ModelSamplingFlow)")
    needs_cpu_noise = name in ("euler_ancestral", "lcm") or (name == "res_multistep" and options.get("eta"))
    if noise_sampler is None and needs_cpu_noise:
        noise_sampler = CPUNoiseSampler(x.shape, seed)
    kw = dict(callback=callback, model_sampling=model_sampling, seed=seed, noise_sampler=noise_sampler, **options)
    if name == "euler_ancestral":
        kw["s_noise"] = options.get("s_noise", 1.0) * model_sampling.noise_scale
    if name in ("euler", "ddim"):           # ComfyUI's ddim is euler (its random option only touches inpainting)
        return sample_euler(model, x, sigmas, **kw)
    if name in ("uni_pc", "uni_pc_bh2"):
        return sample_uni_pc(model, x, sigmas, variant="bh2" if name == "uni_pc_bh2" else "bh1", **kw)
    fn = {"euler_ancestral": sample_euler_ancestral, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m,
          "dpmpp_2m_sde": sample_dpmpp_2m_sde, "dpmpp_sde": sample_dpmpp_sde,
          "res_multistep": sample_res_multistep, "lcm": sample_lcm}.get(name)
    if fn is None:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(SAMPLER_NAMES)}")
    return fn(model, x, sigmas, **kw)


def run_ksampler(name: str, model: Denoiser, noise: np.ndarray, latent: np.ndarray, sigmas,
                 model_sampling: ModelSamplingFlow, *, seed: int | None = None,
                 callback: Callback | None = None, **options) -> np.ndarray:
    """ComfyUI's CFGGuider.sample + KSAMPLER.sample around a sampler, for the latent in model space
    (after the latent format's process_latent_in, which ComfyUI skips for an all-zero latent):
    no sigmas returns the latent; otherwise x = noise_scaling(sigmas[0], noise, latent), sample, then
    inverse_noise_scaling with the last sigma -- which uni_pc has changed from 0 to 0.001 in place in
    ComfyUI, so its result is divided by 1 - 0.001 there and here.
    """
    sigmas = np.asarray(sigmas, dtype=np.float32)
    if sigmas.shape[-1] == 0:
        return np.asarray(latent, dtype=np.float32)
    x = model_sampling.noise_scaling(sigmas[0], noise, latent)
    x = sample(name, model, x, sigmas, seed=seed, model_sampling=model_sampling, callback=callback, **options)
    last = F(0.001) if name in _FINAL_SIGMA_0001 and sigmas[-1] == 0 else sigmas[-1]
    return model_sampling.inverse_noise_scaling(last, x)
