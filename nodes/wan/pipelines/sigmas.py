"""ComfyUI's flow-model sampling and its schedulers, in numpy: the sigma arrays KSampler,
KSamplerAdvanced and BasicScheduler hand to a sampler for a Wan model.

Wan is a "CONST" (rectified-flow) model in ComfyUI: x_sigma = sigma * noise + (1 - sigma) * x0, the
network predicts the velocity v = noise - x0, and the samplers see the denoised x0 = x - sigma * v.
`ModelSamplingSD3(shift)` (the node of that name, and Wan's own default with the config's shift) is
ComfyUI's `ModelSamplingDiscreteFlow` with multiplier 1000: sigma(t) = shift*t / (1 + (shift-1)*t)
for t = timestep / 1000, tabulated at t = 1/1000 ... 1000/1000.

Dtypes follow ComfyUI (comfy/model_sampling.py, comfy/samplers.py): the 1000-entry table and every
scheduler output are float32 tensors there, computed with float32 tensor arithmetic where ComfyUI uses
tensors and in float64 where it uses Python floats; the same split is made here (including the fused
multiply-adds of torch's x86 float32 linspace), so the arrays equal ComfyUI's bit for bit, except
where torch evaluates a float32 transcendental (pow, exp, tan in karras / exponential / kl_optimal):
those are computed in float64 and rounded, which can differ from torch's by an ulp.
"""
from __future__ import annotations

import math

import numpy as np

from .torch_randn import fma32

_f32 = np.float32

SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]
# KSampler asks these samplers' schedules for one extra step and then drops the next-to-last sigma
# (comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS). BasicScheduler does not.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def time_snr_shift(shift: float, t):
    """sigma = shift*t / (1 + (shift-1)*t), in float64 for Python floats (ComfyUI's `time_snr_shift`)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def _shift32(shift: float, t: np.ndarray) -> np.ndarray:
    """time_snr_shift on a float32 tensor: each Python scalar is rounded to float32 by torch first."""
    t = np.asarray(t, dtype=np.float32)
    if shift == 1.0:
        return t
    return (_f32(shift) * t) / (_f32(1.0) + _f32(shift - 1) * t)


class ModelSamplingFlow:
    """ComfyUI's `ModelSamplingDiscreteFlow` + `CONST`, the model sampling of every Wan model."""

    def __init__(self, shift: float = 1.0, multiplier: float = 1000, timesteps: int = 1000,
                 noise_scale: float = 1.0):
        self.shift = float(shift)
        self.multiplier = multiplier
        self.noise_scale = float(noise_scale)
        # torch.arange(1, T + 1) / T is an int tensor divided in float32, then scaled and unscaled
        # by the multiplier in float32 before the shift -- each step rounds, as here.
        t = np.arange(1, timesteps + 1, dtype=np.float32) / _f32(timesteps)
        self.sigmas = self.sigma(t * _f32(multiplier))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, timestep) -> np.ndarray:
        return _shift32(self.shift, np.asarray(timestep, dtype=np.float32) / _f32(self.multiplier))

    def timestep(self, sigma) -> np.ndarray:
        """The timestep the network is called with for `sigma` (sigma * 1000 in float32)."""
        return np.asarray(sigma, dtype=np.float32) * _f32(self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        """Sampling progress in [0, 1] -> sigma (Python float; used by conditioning start/end percents)."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)

    # ---- CONST: how noise, latent and the network output combine -----------------------------------
    def noise_scaling(self, sigma, noise: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """The sampler's starting point: sigma * noise + (1 - sigma) * latent (float32)."""
        s = _f32(sigma)
        scaled = noise if self.noise_scale == 1.0 else _f32(self.noise_scale) * noise
        return s * scaled.astype(np.float32) + (_f32(1.0) - s) * latent.astype(np.float32)

    def inverse_noise_scaling(self, sigma, latent: np.ndarray) -> np.ndarray:
        """What KSAMPLER applies to the sampler's result with the last sigma: latent / (1 - sigma)."""
        return latent / (_f32(1.0) - _f32(sigma))

    def calculate_denoised(self, sigma, model_output: np.ndarray, model_input: np.ndarray) -> np.ndarray:
        """x0 from the predicted velocity: x - v * sigma (float32)."""
        return model_input - model_output * _f32(sigma)

    @staticmethod
    def calculate_input(sigma, x: np.ndarray) -> np.ndarray:
        """CONST models take the noisy latent unscaled."""
        return x


def ModelSamplingSD3(shift: float = 3.0, multiplier: float = 1000) -> ModelSamplingFlow:
    """The ModelSamplingSD3 node: discrete flow sampling with this shift and multiplier 1000."""
    return ModelSamplingFlow(shift=shift, multiplier=multiplier)


# ---- schedulers (comfy.samplers.SCHEDULER_HANDLERS) ---------------------------------------------------

def _linspace32(start, end, steps: int) -> np.ndarray:
    """torch.linspace on float32 (CPU): the step is computed in float32 and the two halves are
    filled from either end, start + step*i below the middle and end - step*(steps-1-i) above; x86
    builds of torch fuse each multiply-add into one FMA, as here."""
    start, end = _f32(start), _f32(end)
    if steps == 1:
        return np.array([start], dtype=np.float32)
    step = (end - start) / _f32(steps - 1)
    i = np.arange(steps)
    lo = fma32(step, i.astype(np.float32), start)
    hi = fma32(-step, (steps - 1 - i).astype(np.float32), end)
    return np.where(i < steps // 2, lo, hi).astype(np.float32)


def _append_zero(s: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(s, dtype=np.float32), np.zeros(1, np.float32)])


def simple_scheduler(ms: ModelSamplingFlow, steps: int) -> np.ndarray:
    """Every len(table)/steps-th entry of the table, from the top."""
    ss = len(ms.sigmas) / steps
    return _append_zero([ms.sigmas[-(1 + int(x * ss))] for x in range(steps)])


def ddim_uniform_scheduler(ms: ModelSamplingFlow, steps: int) -> np.ndarray:
    """Table entries 1, 1+k, 1+2k, ... (k = len // steps), reversed, ending in 0."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    ss = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += ss
    return np.array(sigs[::-1], dtype=np.float32)


def normal_scheduler(ms: ModelSamplingFlow, steps: int, sgm: bool = False) -> np.ndarray:
    """Uniform in timestep between timestep(sigma_max) and timestep(sigma_min); sgm_uniform leaves
    out the last point (and always appends 0)."""
    start = ms.timestep(ms.sigmas[-1])
    end = ms.timestep(ms.sigmas[0])
    append_zero = True
    if sgm:
        timesteps = _linspace32(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = _linspace32(start, end, steps)
    sigs = ms.sigma(timesteps)
    return _append_zero(sigs) if append_zero else sigs.astype(np.float32)


def beta_scheduler(ms: ModelSamplingFlow, steps: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Table indices at the Beta(alpha, beta) quantiles (arXiv 2407.12173), repeats dropped."""
    from scipy import stats     # only this scheduler needs it; MindSpore already depends on scipy

    total = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(stats.beta.ppf(ts, alpha, beta) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(ms.sigmas[int(t)])
        last = t
    return _append_zero(sigs)


def linear_quadratic_scheduler(ms: ModelSamplingFlow, steps: int, threshold_noise: float = 0.025,
                               linear_steps: int | None = None) -> np.ndarray:
    """Mochi's schedule: linear to `threshold_noise` over the first half, then quadratic to 1."""
    if steps == 1:
        sched = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        lin = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quad_steps = steps - linear_steps
        qc = diff / (linear_steps * quad_steps ** 2)
        lc = threshold_noise / linear_steps - 2 * diff / (quad_steps ** 2)
        const = qc * (linear_steps ** 2)
        quad = [qc * (i ** 2) + lc * i + const for i in range(linear_steps, steps)]
        sched = [1.0 - x for x in lin + quad + [1.0]]
    return np.array(sched, dtype=np.float32) * ms.sigmas[-1]


def karras_scheduler(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022): uniform in sigma**(1/rho)."""
    ramp = _linspace32(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    base = _f32(hi) + ramp * _f32(lo - hi)
    return _append_zero((base.astype(np.float64) ** _f32(rho)).astype(np.float32))


def exponential_scheduler(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Uniform in log sigma."""
    logs = _linspace32(math.log(sigma_max), math.log(sigma_min), n)
    return _append_zero(np.exp(logs.astype(np.float64)).astype(np.float32))


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """AUTOMATIC1111 PR 15608: uniform in arctan(sigma)."""
    with np.errstate(divide="ignore", invalid="ignore"):      # n == 1 gives NaN, as in ComfyUI
        w = np.arange(n, dtype=np.float32) / _f32(n - 1)
    mix = w * _f32(math.atan(sigma_min)) + (_f32(1.0) - w) * _f32(math.atan(sigma_max))
    return _append_zero(np.tan(mix.astype(np.float64)).astype(np.float32))


_MODEL_SCHEDULERS = {
    "simple": simple_scheduler,
    "sgm_uniform": lambda ms, steps: normal_scheduler(ms, steps, sgm=True),
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
}
_RANGE_SCHEDULERS = {"karras": karras_scheduler, "exponential": exponential_scheduler,
                     "kl_optimal": kl_optimal_scheduler}


def calculate_sigmas(ms: ModelSamplingFlow, scheduler: str, steps: int) -> np.ndarray:
    """`comfy.samplers.calculate_sigmas`: steps + 1 float32 sigmas (usually ending in 0)."""
    if scheduler in _MODEL_SCHEDULERS:
        return _MODEL_SCHEDULERS[scheduler](ms, steps)
    if scheduler in _RANGE_SCHEDULERS:
        return _RANGE_SCHEDULERS[scheduler](n=steps, sigma_min=ms.sigma_min, sigma_max=ms.sigma_max)
    raise ValueError(f"unknown scheduler {scheduler!r}; ComfyUI's are {SCHEDULER_NAMES}")


def ksampler_sigmas(ms: ModelSamplingFlow, scheduler: str, steps: int, sampler_name: str = "euler",
                    denoise: float | None = 1.0) -> np.ndarray:
    """The sigmas of a KSampler / KSamplerAdvanced node (comfy.samplers.KSampler.set_steps).

    denoise < 1 schedules int(steps / denoise) steps and keeps the last steps + 1 sigmas; uni_pc,
    uni_pc_bh2, dpm_2 and dpm_2_ancestral schedule one step more and drop the next-to-last sigma.
    """
    def schedule(n):
        if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
            s = calculate_sigmas(ms, scheduler, n + 1)
            return np.concatenate([s[:-2], s[-1:]])
        return calculate_sigmas(ms, scheduler, n)

    if denoise is None or denoise > 0.9999:
        return schedule(steps)
    if denoise <= 0.0:
        return np.zeros(0, np.float32)
    return schedule(int(steps / denoise))[-(steps + 1):]


def basic_scheduler(ms: ModelSamplingFlow, scheduler: str, steps: int, denoise: float = 1.0) -> np.ndarray:
    """The BasicScheduler node (for SamplerCustom): like KSampler's, but denoise < 1.0 (not 0.9999)
    switches to the longer schedule and no sigma is ever dropped."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return np.zeros(0, np.float32)
        total = int(steps / denoise)
    return calculate_sigmas(ms, scheduler, total)[-(steps + 1):]


def slice_sigmas(sigmas: np.ndarray, start_step: int | None = None, last_step: int | None = None,
                 force_full_denoise: bool = False) -> np.ndarray | None:
    """KSamplerAdvanced's start_at_step / end_at_step (comfy.samplers.KSampler.sample).

    Returns None when start_step leaves no step to run: ComfyUI then returns the input latent
    unchanged. `force_full_denoise` (return_with_leftover_noise = disable) sets the last kept sigma
    to 0, but only when end_at_step actually cut the schedule.
    """
    sigmas = np.array(sigmas, dtype=np.float32)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas
