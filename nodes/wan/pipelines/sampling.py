"""The Wan denoising loop, as diffusers' Wan pipelines run it, usable without the graph.

Latents here are in the model's normalised space (what the scheduler steps).
A run can stop after any step and hand back a `SamplerState`; a later call
with that state continues exactly where it stopped (multistep history
included), so split stages give the same result as one uninterrupted run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import mindspore as ms
from mindspore import mint

from .conditioning import CONCAT_LATENTS, FIRST_FRAME_MASK
from ..models.denoiser import WanDenoiser
from .image_to_video import recompose_first_frame, token_timestep_mask
from .schedulers import FlowMatchEulerScheduler, UniPCFlowScheduler
from .step_cache import COND, UNCOND
from .vace_conditioning import VACE_CONTROL, VACE_STRENGTH

SCHEDULERS = {"unipc": UniPCFlowScheduler, "euler": FlowMatchEulerScheduler}


@dataclass(frozen=True)
class SamplerState:
    """Where a stopped run is: the latents and the scheduler's full state."""
    latents: ms.Tensor
    scheduler: str
    steps: int
    shift: float
    step_index: int
    scheduler_state: dict
    step_cache: object = None    # step_cache.CacheState when the run used step caching

    def cache_nbytes(self) -> int:
        return int(self.latents.nbytes) * 3 + (self.step_cache.nbytes() if self.step_cache is not None else 0)


def make_scheduler(name: str, steps: int, shift: float, config: dict | None = None):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    sched = cls.from_config(config) if config and name == "unipc" else cls()
    sched.set_timesteps(steps, shift=shift)
    return sched


# Up to this many latent tokens, CFG's two passes run as one batch of 2B: the
# per-op launch cost is paid once (small inputs are launch-bound on CPU), while
# larger inputs run the passes one after the other to keep activation memory.
CFG_BATCH_MAX_TOKENS = 4096


def _same_shape(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or tuple(a.shape) == tuple(b.shape))


def _model_input(x, cond, denoiser: WanDenoiser):
    """What the transformer takes for latents x under this conditioning (only x is stepped)."""
    concat = cond.extras.get(CONCAT_LATENTS)
    if concat is not None:
        if concat.shape[0] != x.shape[0]:
            concat = mint.broadcast_to(concat, (x.shape[0],) + tuple(concat.shape[1:]))
        return mint.cat([x, concat.astype(x.dtype)], dim=1).astype(denoiser.dtype)
    if FIRST_FRAME_MASK in cond.extras:
        return recompose_first_frame(x, cond).astype(denoiser.dtype)
    return x.astype(denoiser.dtype)


def _timestep_input(denoiser: WanDenoiser, t, shape, cond) -> ms.Tensor:
    mask = cond.extras.get(FIRST_FRAME_MASK)
    if mask is None:
        return denoiser.timestep_input(t, shape)
    # TI2V image-to-video: the given frame's tokens are clean, so they get timestep 0
    tokens = token_timestep_mask(mask, denoiser.config.get("patch_size", (1, 2, 2)))
    return ms.Tensor(np.tile((tokens * np.float32(t)).astype(np.float32), (shape[0], 1)))


def _control_kwargs(model, cond, batch: int) -> dict:
    """VACE control for the model call (the same control for cond and uncond), or nothing."""
    control = cond.extras.get(VACE_CONTROL)
    if control is None:
        return {}
    if not hasattr(model, "vace_layers"):
        raise ValueError("the conditioning carries VACE control but the model is not a VACE model")
    if control.shape[0] != batch:
        control = mint.cat([control] * (batch // control.shape[0]))
    scale = [float(cond.extras.get(VACE_STRENGTH, 1.0))] * len(model.vace_layers)
    return {"control_hidden_states": control.astype(model.dtype), "control_hidden_states_scale": scale}


def _caller(model, step_cache):
    """call(tracks, *args, **kwargs) -> model(*args, **kwargs); with a step cache session, the model's
    blocks run through its hook for the CFG passes (`tracks`) in the batch."""
    if step_cache is None:
        return lambda tracks, *args, **kwargs: model(*args, **kwargs)
    return lambda tracks, *args, **kwargs: model(*args, blocks_hook=step_cache.blocks_hook(tracks), **kwargs)


def _guided(model, x, t, cond, uncond, guidance: float, cfg: bool, denoiser: WanDenoiser, step_cache=None):
    ts = _timestep_input(denoiser, t, x.shape, cond)
    xin = _model_input(x, cond, denoiser)
    call = _caller(model, step_cache)
    if not cfg:
        return call((COND,), xin, ts, cond.embeds, encoder_hidden_states_image=cond.image_embeds,
                    **_control_kwargs(model, cond, x.shape[0]))
    if uncond is None:
        raise ValueError("guidance > 1 needs a negative conditioning")
    xin_u = xin if not uncond.extras else _model_input(x, uncond, denoiser)
    if (denoiser.tokens(x.shape) * x.shape[0] <= CFG_BATCH_MAX_TOKENS and _same_shape(cond.embeds, uncond.embeds)
            and _same_shape(cond.image_embeds, uncond.image_embeds)):
        b = x.shape[0]
        img = None if cond.image_embeds is None else mint.cat([cond.image_embeds, uncond.image_embeds])
        both = call((COND, UNCOND), mint.cat([xin, xin_u]), mint.cat([ts, ts]), mint.cat([cond.embeds, uncond.embeds]),
                    encoder_hidden_states_image=img, **_control_kwargs(model, cond, 2 * b))
        pred, pred_u = both[:b], both[b:]
    else:
        pred = call((COND,), xin, ts, cond.embeds, encoder_hidden_states_image=cond.image_embeds,
                    **_control_kwargs(model, cond, x.shape[0]))
        pred_u = call((UNCOND,), xin_u, ts, uncond.embeds, encoder_hidden_states_image=uncond.image_embeds,
                      **_control_kwargs(model, uncond if VACE_CONTROL in uncond.extras else cond, x.shape[0]))
    return pred_u + guidance * (pred - pred_u)


def check_conditioning(denoiser: WanDenoiser, latent_channels: int, cond) -> None:
    """Fail early, naming what is missing, when the conditioning does not fit the model."""
    expected = denoiser.in_channels
    got = latent_channels + cond.concat_channels
    if got != expected:
        if cond.concat_channels == 0 and expected > latent_channels:
            raise ValueError(f"the model takes {expected} input channels ({expected - latent_channels} of image "
                             f"conditioning) but the conditioning carries no image latents: condition it on a "
                             f"start image (WanImageConditioning)")
        raise ValueError(f"latent ({latent_channels} channels) plus image conditioning ({cond.concat_channels}) "
                         f"give {got} channels but the model takes {expected}")
    if denoiser.config.get("image_dim") is not None and cond.image_embeds is None:
        raise ValueError("the model attends to CLIP image embeddings (image_dim "
                         f"{denoiser.config['image_dim']}) but the conditioning has none: pass image embeds "
                         "(WanImageConditioning's clip_vision_output input, from WanCLIPVisionEncode)")


def denoise(denoiser: WanDenoiser, positive, negative, *, steps: int, guidance: float,
            guidance_2: float | None = None, scheduler: str = "unipc", shift: float | None = None,
            latents: ms.Tensor | None = None, noise: np.ndarray | ms.Tensor | None = None,
            start_step: int = 0, end_step: int | None = None, add_noise: bool = True,
            state: SamplerState | None = None, leftover_noise: bool = True,
            callback: Callable[[int, int], None] | None = None, step_cache=None,
            on_latents: Callable[[ms.Tensor], None] | None = None):
    """Run steps [start_step, end_step) and return (latents, state_or_None).

    - `latents`: clean normalised latents to start from (None = nothing, pure noise).
    - `noise`: the initial noise (same shape); required when `add_noise`.
    - `state`: continue a run stopped earlier (overrides latents/noise/add_noise).
    Returns the state when the run stops before the last step, else None.
    With `leftover_noise=False` a run that stops early returns instead the clean
    estimate x0 = x - sigma * v at its last timestep (one more model call) and no state.
    - `step_cache`: a `step_cache.StepCacheSession` (skips transformer work; its state is carried in
      the returned state, so chained stages skip as one run does).
    """
    shift = denoiser.default_shift if shift is None else float(shift)
    end_step = steps if end_step is None else min(int(end_step), steps)
    if not 0 <= start_step <= end_step:
        raise ValueError(f"start_step {start_step} must be within [0, end_step={end_step}]")
    sched = make_scheduler(scheduler, steps, shift, denoiser.scheduler_config)
    if state is not None:
        if (state.scheduler, state.steps, state.shift) != (scheduler, steps, shift):
            raise ValueError(
                f"the incoming latent stopped a run with scheduler={state.scheduler}, steps={state.steps}, "
                f"shift={state.shift}; this stage has scheduler={scheduler}, steps={steps}, shift={shift}")
        if state.step_index != start_step:
            raise ValueError(f"the incoming latent stopped at step {state.step_index}; set start_step to it "
                             f"(got {start_step})")
        sched.load_state_dict(state.scheduler_state)
        x = state.latents
    else:
        if add_noise:
            if noise is None:
                raise ValueError("add_noise needs a noise tensor")
            noise = noise if isinstance(noise, ms.Tensor) else ms.Tensor(np.asarray(noise, np.float32))
            x = noise if latents is None else sched.add_noise(latents, noise, start_step)
        else:
            if latents is None:
                raise ValueError("add_noise=False needs input latents")
            x = latents
        sched.begin(start_step)
    g2 = guidance if guidance_2 is None else guidance_2
    # As diffusers: the unconditional pass runs iff the main guidance is > 1,
    # and each expert then mixes with its own scale.
    cfg = guidance > 1.0
    x = x.astype(ms.float32)
    for cond in (positive, negative) if cfg else (positive,):
        if cond is not None:
            check_conditioning(denoiser, x.shape[1], cond)
    if step_cache is not None:
        step_cache.begin(denoiser, steps, [denoiser.expert_for(t)[1] for t in sched.timesteps], cfg, positive,
                         state.step_cache if state is not None else None)
    for i in range(start_step, end_step):
        t = sched.timesteps[i]
        model, expert = denoiser.expert_for(t)
        if step_cache is not None:
            step_cache.begin_step(i)
        pred = _guided(model, x, t, positive, negative, g2 if expert else guidance, cfg, denoiser, step_cache)
        x = sched.step(pred, x)
        if on_latents is not None:      # e.g. a live preview: the latents after this step
            on_latents(x)
        if callback is not None:
            callback(i + 1 - start_step, end_step - start_step)
    if end_step < steps:
        if not leftover_noise:
            t = sched.timesteps[end_step]
            model, expert = denoiser.expert_for(t)
            pred = _guided(model, x, t, positive, negative, g2 if expert else guidance, cfg, denoiser)
            x0 = x - float(sched.sigmas[end_step]) * pred.astype(ms.float32)
            return recompose_first_frame(x0, positive), None
        # the state keeps the raw latents: the next stage recomposes its model input itself
        return recompose_first_frame(x, positive), SamplerState(
            x, scheduler, steps, shift, end_step, sched.state_dict(),
            step_cache.snapshot() if step_cache is not None else None)
    return recompose_first_frame(x, positive), None
