"""ComfyUI's sampling of a Wan model -- KSampler, KSamplerAdvanced, SamplerCustom -- around our transformer.

ComfyUI's sampling math (sigma schedules, the samplers, its seeded noise) lives in `sigmas`,
`k_samplers` and `torch_randn`; this module is the bridge from a `WanDenoiser` and two
`WanConditioning`s to the function those samplers call, `denoised = model(x, sigma)`, and the
steps ComfyUI takes around a sampler (comfy/sample.py, comfy/samplers.py, nodes.common_ksampler):

- Latents. ComfyUI's LATENT holds raw VAE latents (`"normalized": False`); sampling runs in the
  model's space after the latent format's `process_in` ((x - mean) / std), which ComfyUI skips for
  an all-zero latent (an empty latent stays zero), and returns `process_out` of the result. A LATENT
  of our Wan nodes (`"normalized": True`) is already in the model's space. Results are raw LATENTs.
- The model (ComfyUI's BaseModel.apply_model for a CONST flow model): timestep = sigma * 1000 in
  float32, velocity v from the transformer, denoised = x - v * sigma; classifier-free guidance on the
  denoised values as `cfg_function` (uncond + (cond - uncond) * cfg; no unconditional pass when cfg
  is 1 within math.isclose, as ComfyUI).
- Conditioning: a `WanConditioning` carries the prompt embeddings and, in its extras, the I2V concat
  channels (CONCAT_LATENTS: 4 mask + latent channels in the model's space, i.e. ComfyUI's
  `concat_cond` output), VACE control (VACE_CONTROL / VACE_STRENGTH) and CLIP image embeddings --
  the same representation our WanDenoise reads, so either family's conditioning nodes feed either
  sampler. A TI2V start frame is a `noise_mask` on the LATENT as ComfyUI's Wan22ImageToVideoLatent
  makes it; our conditioning's FIRST_FRAME_* extras are turned into the same mask.
- Noise mask (inpainting, TI2V): ComfyUI's KSamplerX0Inpaint -- known parts of x replaced before each
  model call (Wan2.2 TI2V: by the clean latent; other models: by the latent noised to sigma), and of
  the result after; Wan2.2 TI2V also gets per-frame timesteps (mean of the mask over each frame,
  times t; WAN22.process_timestep), repeated over the frame's tokens.
- Model sampling: discrete flow with ComfyUI's Wan default shift 8 unless ModelSamplingSD3 set one
  (`with_model_sampling`). A Wan2.2 A14B pair is two MODELs chained through two KSamplerAdvanced, as
  in ComfyUI; a two-expert MODEL of our loaders switches experts at its boundary (t = sigma * 1000).
- The two CFG passes are two transformer calls, never one batch of two (see `_velocities`).
- Step caching: a MODEL patched with a `StepCache` (WanApplyStepCache) skips transformer work as
  WanDenoise does (`CachedSteps` maps the sampler's calls to steps); a KSamplerAdvanced stage that
  starts where the previous one stopped continues its cache (the LATENT carries it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import mindspore as ms
from mindspore import mint

from ..models.denoiser import WanDenoiser
from .comfy_conditioning import NOISE_MASK, process_in, process_out
from .conditioning import FIRST_FRAME_LATENTS, FIRST_FRAME_MASK
from .k_samplers import SAMPLER_NAMES as _IMPLEMENTED, cfg_denoised, run_ksampler
from .latent_space import is_normalized
from .sampling import _control_kwargs, _model_input, check_conditioning
from .step_cache import COND, UNCOND, StepCacheSession
from .sigmas import SCHEDULER_NAMES, ModelSamplingFlow, basic_scheduler, ksampler_sigmas, slice_sigmas
from .torch_randn import TorchCPUGenerator, prepare_noise
from .vace_conditioning import VACE_CONTROL

F = np.float32

# ComfyUI's Wan model configs (comfy/supported_models.py WAN21_T2V and every Wan config after it)
# sample with shift 8 unless a ModelSamplingSD3 node patches the model.
COMFY_DEFAULT_SHIFT = 8.0
# Where ModelSamplingSD3 records its settings on a WanDenoiser (its scheduler_config, which the
# frozen dataclass lets us replace; the denoiser itself is shared, not copied).
MODEL_SAMPLING_KEY = "comfy_model_sampling"

# ComfyUI's sampler list (comfy.samplers.SAMPLER_NAMES), in its order, restricted to those
# implemented in k_samplers; the *_gpu variants differ from the plain ones only in where the Brownian
# tree lives, and on a CPU (where ComfyUI's seeds are defined) they are the same sampler.
_COMFY_ORDER = ("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
                "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
                "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
                "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
                "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
                "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2")
_ALIASES = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde"}
SAMPLER_NAMES = [n for n in _COMFY_ORDER if _ALIASES.get(n, n) in _IMPLEMENTED]
SCHEDULERS = list(SCHEDULER_NAMES)

Callback = Callable[[int, np.ndarray, np.ndarray, int], None]     # (step, denoised, x, total_steps)


@dataclass(frozen=True)
class ComfySampler:
    """The SAMPLER socket: a sampler name and its options (KSamplerSelect gives none)."""
    name: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.name!r}; available: {', '.join(SAMPLER_NAMES)}")


# ---- model sampling (ModelSamplingSD3) ----------------------------------------------------------------

def with_model_sampling(denoiser: WanDenoiser, shift: float, multiplier: float = 1000) -> WanDenoiser:
    """ModelSamplingSD3: the same weights sampled as a discrete flow with this shift. The diffusers
    `flow_shift` is set too, so our WanDenoise (shift 0 = the model's own) follows the same patch."""
    config = {**denoiser.scheduler_config, "flow_shift": float(shift),
              MODEL_SAMPLING_KEY: {"shift": float(shift), "multiplier": float(multiplier)}}
    return denoiser.with_(scheduler_config=config)


def model_sampling(denoiser: WanDenoiser) -> ModelSamplingFlow:
    """The model's ComfyUI model sampling: ModelSamplingSD3's if patched, else ComfyUI's Wan default."""
    s = denoiser.scheduler_config.get(MODEL_SAMPLING_KEY) or {}
    return ModelSamplingFlow(shift=s.get("shift", COMFY_DEFAULT_SHIFT), multiplier=s.get("multiplier", 1000))


# ---- latent spaces ---------------------------------------------------------------------------------------

def _np(x) -> np.ndarray:
    return (x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)).astype(np.float32, copy=False)


def model_channels(denoiser: WanDenoiser) -> int:
    return int(denoiser.config.get("out_channels", 16))


def is_wan22(denoiser: WanDenoiser) -> bool:
    """ComfyUI's WAN22 model class (the TI2V-5B, 48 latent channels): per-frame timesteps under a
    noise mask, and a clean (not re-noised) known region."""
    return model_channels(denoiser) == 48


def fix_empty_latent_channels(denoiser: WanDenoiser, samples: np.ndarray) -> np.ndarray:
    """An all-zero latent takes the model's channel count (an empty 16-channel latent for TI2V-5B)."""
    c = model_channels(denoiser)
    if samples.shape[1] != c and not np.any(samples):
        samples = np.zeros((samples.shape[0], c) + samples.shape[2:], np.float32)
    return samples


def to_model_space(samples: np.ndarray, normalized: bool) -> np.ndarray:
    """CFGGuider.inner_sample: process_in unless the latent is all zeros (or already normalised)."""
    if normalized or not np.any(samples):
        return samples
    return process_in(samples)


def _resize_linear(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear resampling along one axis as torch's interpolate computes its taps (align_corners=False:
    half-pixel centres, source clamped at 0, float32 weights)."""
    m = a.shape[axis]
    if m == n:
        return a
    src = np.maximum(F(m / n) * (np.arange(n, dtype=F) + F(0.5)) - F(0.5), F(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, m - 1)
    lam = (src - i0).astype(F).reshape([-1 if k == axis else 1 for k in range(a.ndim)])
    return np.take(a, i0, axis=axis) * (F(1) - lam) + np.take(a, i1, axis=axis) * lam


def prepare_mask(mask, shape) -> np.ndarray:
    """comfy.utils.reshape_mask for video latents: [.., T, H, W] -> trilinear to the latent's
    (T, h, w), repeated over channels and batch. Passes along W, then H, then T nest the products as
    torch's trilinear kernel does; a mask of the latent's size (TI2V) passes unchanged."""
    m = _np(mask)
    if m.ndim < 5:
        m = m.reshape((1, 1, -1) + m.shape[-2:])
    for axis in (4, 3, 2):
        m = _resize_linear(m, axis, shape[axis])
    if m.shape[1] < shape[1]:
        m = np.tile(m, (1, -(-shape[1] // m.shape[1]), 1, 1, 1))[:, :shape[1]]
    if m.shape[0] != shape[0]:
        m = np.tile(m, (-(-shape[0] // m.shape[0]), 1, 1, 1, 1))[:shape[0]]
    return np.ascontiguousarray(m, dtype=np.float32)


# ---- the model function ----------------------------------------------------------------------------------

def _without_first_frame(cond):
    """The conditioning minus TI2V first-frame extras (handled here as a noise mask instead)."""
    if cond is None or FIRST_FRAME_MASK not in cond.extras:
        return cond
    return replace(cond, extras={k: v for k, v in cond.extras.items()
                                 if k not in (FIRST_FRAME_MASK, FIRST_FRAME_LATENTS)})


def _batched(t, repeat: int):
    """`t` repeated for `repeat` copies of the conditioning's batch (FLF2V's CLIP tensor holds two
    rows per sample, so the factor comes from the text embeds, not from this tensor's rows)."""
    if t is None or repeat == 1:
        return t
    return mint.cat([t] * repeat)


class WanFlowModel:
    """ComfyUI's guided model function for a Wan denoiser: `denoised = self(x, sigma)` (float32 numpy).

    `denoise_mask` (model-space shape) gives Wan2.2 TI2V its per-frame timesteps; the replacement of
    known regions is `InpaintModel`'s.
    """

    def __init__(self, denoiser: WanDenoiser, positive, negative, cfg: float, *, latent_channels: int,
                 denoise_mask: np.ndarray | None = None, step_cache: "CachedSteps | None" = None):
        self.denoiser = denoiser
        self.step_cache = step_cache
        self.cfg = float(cfg)
        self.sampling = model_sampling(denoiser)
        use_uncond = not math.isclose(self.cfg, 1.0)
        if use_uncond and negative is None:
            raise ValueError("cfg other than 1 needs a negative conditioning")
        self.conds = [_without_first_frame(positive)] + ([_without_first_frame(negative)] if use_uncond else [])
        for cond in self.conds:
            check_conditioning(denoiser, latent_channels, cond)
        self.frame_mask = None
        if denoise_mask is not None and is_wan22(denoiser):
            self.frame_mask = denoise_mask.mean(axis=(1, 3, 4), dtype=np.float32)     # [B, T]

    def timesteps(self, t: np.float32, shape) -> ms.Tensor:
        """[B] float32 timesteps, or per token [B, L] under a Wan2.2 TI2V noise mask."""
        if self.frame_mask is None:
            return ms.Tensor(np.full((shape[0],), t, np.float32))
        per_frame = (self.frame_mask * t).astype(np.float32)
        return ms.Tensor(np.repeat(per_frame, self.denoiser.tokens(shape) // shape[2], axis=1))

    def _control_source(self, cond):
        """The conditioning whose VACE control a pass uses: its own, else the positive's (as WanDenoise)."""
        return cond if VACE_CONTROL in cond.extras else self.conds[0]

    def _velocities(self, model, x: ms.Tensor, ts: ms.Tensor) -> list[np.ndarray]:
        # One transformer call per pass: on MindSpore's CPU kernels a batch of two is not bit-identical
        # to two calls (a few ulp), and a result must not depend on how the passes were grouped.
        b = x.shape[0]
        hooks = [None] * len(self.conds) if self.step_cache is None else \
            [self.step_cache.session.blocks_hook((track,)) for track in (COND, UNCOND)[:len(self.conds)]]
        return [_np(model(_model_input(x, c, self.denoiser), ts, _batched(c.embeds, b // c.embeds.shape[0]),
                          encoder_hidden_states_image=_batched(c.image_embeds, b // c.embeds.shape[0]),
                          blocks_hook=hook, **_control_kwargs(model, self._control_source(c), b)).astype(ms.float32))
                for c, hook in zip(self.conds, hooks)]

    def __call__(self, x: np.ndarray, sigma) -> np.ndarray:
        sigma = F(sigma)
        t = F(self.sampling.timestep(sigma))
        model, _ = self.denoiser.expert_for(float(t))
        if self.step_cache is not None:
            self.step_cache.at(sigma)
        x = np.asarray(x, np.float32)
        preds = self._velocities(model, ms.Tensor(x), self.timesteps(t, x.shape))
        denoised = [self.sampling.calculate_denoised(sigma, v, x) for v in preds]
        return cfg_denoised(denoised[0], denoised[1] if len(denoised) > 1 else None, self.cfg)


# LATENT keys of a cached run: what was skipped (also in the run report), and the cache to continue from.
STEP_CACHE_STATS, STEP_CACHE_STATE = "step_cache_stats", "step_cache_state"


class CachedSteps:
    """A `StepCacheSession` driven by a ComfyUI sampler's model calls.

    The session decides per step of the schedule; a sampler calls the model at sigmas. The first call
    at the schedule's sigma i begins step `offset + i` (offset: KSamplerAdvanced's start_at_step, so
    split stages count steps as one run does); calls at sigmas between (dpmpp_sde's midpoints) share
    the current step's decision. heun's corrector, evaluated at sigma i+1, thus begins step i+1, whose
    own call then shares that decision: every step is decided once, whatever the sampler.
    """

    def __init__(self, session: StepCacheSession, run_sigmas: np.ndarray, offset: int, denoiser: WanDenoiser,
                 schedule: np.ndarray):
        self.session = session
        self.sigmas = np.asarray(run_sigmas, np.float32)[:-1]   # the last sigma is where the run ends
        self.offset, self.current = int(offset), -1
        self.denoiser, self.schedule = denoiser, schedule

    def model_identity(self, step: int) -> str:
        """What the transformer of `step` is, stably across processes (a LATENT may come from the disk
        cache): its file and LoRAs. A cache is only continued by the same transformer."""
        t = model_sampling(self.denoiser).timestep(F(self.schedule[min(step, len(self.schedule) - 2)]))
        model, _ = self.denoiser.expert_for(float(t))
        loras = [f"{lora.source}*{float(strength)!r}" for lora, strength in getattr(model, "loras", ())]
        return "|".join([self.denoiser.name or "", str(self.denoiser.expert_for(float(t))[1]), *loras])

    def at(self, sigma) -> None:
        later = [i for i in np.flatnonzero(self.sigmas == F(sigma)) if i > self.current]
        if later:
            self.current = int(later[0])
            self.session.begin_step(self.offset + self.current)
        elif self.current < 0:    # a sampler evaluating off the schedule first: step 0 decides
            self.current = 0
            self.session.begin_step(self.offset)


def _step_cache(denoiser: WanDenoiser, positive, cfg: float, schedule: np.ndarray, run_sigmas: np.ndarray,
                offset: int, latent: dict) -> CachedSteps | None:
    """The step cache of a MODEL patched by WanApplyStepCache for this run, or None. `schedule`: the
    whole schedule's sigmas (a split run's steps are counted in it); the cache a previous stage stopped
    with is continued when this stage starts at the step it stopped at."""
    config = denoiser.step_cache
    if config is None or not config.active:
        return None
    sampling = model_sampling(denoiser)
    steps = len(schedule) - 1
    experts = [denoiser.expert_for(float(sampling.timestep(F(s))))[1] for s in schedule[:-1]]
    session = StepCacheSession(config)
    cached = CachedSteps(session, run_sigmas, offset, denoiser, schedule)
    carried = latent.get(STEP_CACHE_STATE)
    if not carried or (carried["step"], carried["steps"], carried["model"]) != (
            offset, steps, cached.model_identity(offset)):
        # A fresh cache (e.g. Wan2.2's low-noise MODEL taking over): its steps count from this stage on,
        # so its first `retention` steps run, as after WanDenoise's expert switch.
        carried = None
        experts = [-1] * offset + experts[offset:]
    session.begin(denoiser, steps, experts, not math.isclose(float(cfg), 1.0), positive,
                  carried["state"] if carried else None,
                  first_frame=latent.get(NOISE_MASK) is not None)   # Wan22ImageToVideoLatent's start frame
    return cached


class InpaintModel:
    """ComfyUI's KSamplerX0Inpaint: where the mask is 0, x is replaced before the model call (the clean
    latent for Wan2.2 TI2V; elsewhere the latent noised to sigma) and the result after."""

    def __init__(self, inner: WanFlowModel, latent: np.ndarray, noise: np.ndarray, mask: np.ndarray):
        self.inner, self.latent, self.noise, self.mask = inner, latent, noise, mask
        self.keep = F(1.0) - mask
        self.clean_known = is_wan22(inner.denoiser)

    def __call__(self, x: np.ndarray, sigma) -> np.ndarray:
        known = self.latent if self.clean_known else \
            self.inner.sampling.noise_scaling(sigma, self.noise, self.latent)
        x = x * self.mask + known * self.keep
        return self.inner(x, sigma) * self.mask + self.latent * self.keep


# ---- a sampling run ------------------------------------------------------------------------------------

def _first_frame_mask(positive, samples: np.ndarray, mask):
    """Our TI2V conditioning (FIRST_FRAME_*) as ComfyUI's Wan22ImageToVideoLatent expresses it: the
    start frame written into the latent (model space) and a noise mask that is 0 on it."""
    if mask is not None or positive is None or FIRST_FRAME_MASK not in positive.extras:
        return samples, mask
    m = prepare_mask(positive.extras[FIRST_FRAME_MASK], samples.shape)
    frame = _np(positive.extras[FIRST_FRAME_LATENTS])
    frame = np.broadcast_to(frame, (samples.shape[0],) + frame.shape[1:])
    known = np.zeros_like(samples)
    known[:, :, :frame.shape[2]] = frame
    return samples * m + known * (F(1.0) - m), m


def sample(denoiser: WanDenoiser, positive, negative, cfg: float, sampler: ComfySampler, sigmas,
           latent: dict, noise: np.ndarray, *, seed: int | None = None,
           callback: Callback | None = None, step_cache: CachedSteps | None = None) -> np.ndarray:
    """comfy.samplers.CFGGuider.sample for a LATENT dict and initial noise: the raw (VAE-space) result.

    `latent["samples"]` must already have the model's channel count (`fix_empty_latent_channels`).
    No sigmas: the latent comes back as given (as ComfyUI returns it).
    """
    sigmas = np.asarray(sigmas, np.float32)
    samples = _np(latent["samples"])
    if sigmas.shape[-1] == 0:
        return samples
    x0 = to_model_space(samples, is_normalized(latent))
    mask = latent.get(NOISE_MASK)
    mask = None if mask is None else prepare_mask(mask, samples.shape)
    x0, mask = _first_frame_mask(positive, x0, mask)
    noise = np.asarray(noise, np.float32)
    guider = WanFlowModel(denoiser, positive, negative, cfg, latent_channels=samples.shape[1],
                          denoise_mask=mask, step_cache=step_cache)
    model = guider
    if mask is not None:
        # ComfyUI's ddim re-noises the known region with its own draw (seed + 1), not the initial noise
        known_noise = TorchCPUGenerator(int(41 if seed is None else seed) + 1).randn(noise.shape) \
            if sampler.name == "ddim" else noise
        model = InpaintModel(guider, x0, known_noise, mask)
    out = run_ksampler(_ALIASES.get(sampler.name, sampler.name), model, noise, x0, sigmas, guider.sampling,
                       seed=seed, callback=callback, **sampler.options)
    return process_out(out.astype(np.float32))


def initial_noise(samples: np.ndarray, seed: int, add_noise: bool, batch_index=None) -> np.ndarray:
    """comfy.sample.prepare_noise (torch's CPU normal stream for `seed`), or zeros."""
    if not add_noise:
        return np.zeros(samples.shape, np.float32)
    return prepare_noise(samples.shape, int(seed), batch_index)


def _result(latent: dict, samples: np.ndarray, normalized: bool, cached: CachedSteps | None = None,
            stop: int | None = None) -> dict:
    """ComfyUI copies the LATENT dict and replaces its samples; our WanDenoise's state does not apply.
    A cached run adds what it skipped, and, when it stopped at step `stop` before the end, its cache."""
    out = {k: v for k, v in latent.items()
           if k not in ("sampler_state", "empty", STEP_CACHE_STATS, STEP_CACHE_STATE)}
    out["samples"] = ms.Tensor(np.ascontiguousarray(samples, np.float32))
    out["normalized"] = normalized
    if cached is not None:
        out[STEP_CACHE_STATS] = cached.session.stats()
        if stop is not None and stop < cached.session.steps:
            out[STEP_CACHE_STATE] = {"state": cached.session.snapshot(), "step": int(stop),
                                     "steps": int(cached.session.steps), "model": cached.model_identity(stop - 1)}
    return out


def ksampler(denoiser: WanDenoiser, latent: dict, *, seed: int, steps: int, cfg: float, sampler_name: str,
             scheduler: str, positive, negative, denoise: float = 1.0, add_noise: bool = True,
             start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
             callback: Callback | None = None) -> dict:
    """nodes.common_ksampler: KSampler (denoise) and KSamplerAdvanced (add_noise, start/last step,
    force_full_denoise = not return_with_leftover_noise). Returns a raw LATENT dict."""
    samples = fix_empty_latent_channels(denoiser, _np(latent["samples"]))
    latent = {**latent, "samples": samples}
    noise = initial_noise(samples, seed, add_noise, latent.get("batch_index"))
    schedule = ksampler_sigmas(model_sampling(denoiser), scheduler, steps, sampler_name, denoise)
    sigmas = slice_sigmas(schedule, start_step, last_step, force_full_denoise)
    if sigmas is None or sigmas.shape[-1] == 0:      # nothing to run: ComfyUI hands the latent back
        return _result(latent, samples, is_normalized(latent))
    offset = min(int(start_step or 0), len(schedule) - 1)
    cached = _step_cache(denoiser, positive, cfg, schedule, sigmas, offset, latent)
    raw = sample(denoiser, positive, negative, cfg, ComfySampler(sampler_name), sigmas, latent, noise,
                 seed=seed, callback=callback, step_cache=cached)
    return _result(latent, raw, False, cached, offset + len(sigmas) - 1)


def sample_custom(denoiser: WanDenoiser, latent: dict, *, add_noise: bool, seed: int, cfg: float, positive,
                  negative, sampler: ComfySampler, sigmas,
                  callback: Callback | None = None) -> tuple[dict, dict]:
    """SamplerCustom: (output, denoised_output) -- the latter the last step's prediction of the clean
    latent (the output itself when no step ran)."""
    samples = fix_empty_latent_channels(denoiser, _np(latent["samples"]))
    latent = {**latent, "samples": samples}
    noise = initial_noise(samples, seed, add_noise, latent.get("batch_index"))
    sigmas = np.asarray(sigmas, np.float32)
    last = {}

    def track(step, denoised, x, total):
        last["x0"] = denoised
        if callback is not None:
            callback(step, denoised, x, total)

    if sigmas.shape[-1] == 0:
        out = _result(latent, samples, is_normalized(latent))
        return out, out
    cached = _step_cache(denoiser, positive, cfg, sigmas, sigmas, 0, latent)
    raw = sample(denoiser, positive, negative, cfg, sampler, sigmas, latent, noise, seed=seed, callback=track,
                 step_cache=cached)
    out = _result(latent, raw, False, cached)
    if "x0" not in last:
        return out, out
    return out, _result(latent, process_out(np.asarray(last["x0"], np.float32)), False)


def basic_sigmas(denoiser: WanDenoiser, scheduler: str, steps: int, denoise: float = 1.0) -> np.ndarray:
    """BasicScheduler's SIGMAS for this model."""
    return basic_scheduler(model_sampling(denoiser), scheduler, steps, denoise)
