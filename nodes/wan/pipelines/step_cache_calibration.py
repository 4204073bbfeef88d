"""MagCache calibration: one uncached reference sampling that measures the per-step magnitude
ratios of the transformer's residual (see `mag_ratios`) for a model, resolution and schedule.

The graph node (`WanStepCacheCalibrate`) caches the result under its inputs, like any node output,
so a calibration runs once per model + latent size + steps and is reused by later runs.
"""
from __future__ import annotations

from .sampling import denoise
from .step_cache import StepCacheSession


def calibrate(denoiser, positive, negative, **denoise_args) -> dict:
    """Run `sampling.denoise(denoiser, positive, negative, **denoise_args)` without caching and return
    the ratios it measured as a MAG_RATIOS value: "ratios" [steps, 2] (cond, uncond) with CFG,
    [steps, 1] without; 1 where a step has nothing before it (the first step, an expert switch)."""
    session = StepCacheSession(record=True)
    denoise(denoiser, positive, negative, step_cache=session, **denoise_args)
    steps = int(denoise_args["steps"])
    guidance = float(denoise_args.get("guidance", 1.0))
    return {"ratios": session.recorded_ratios(), "experts": None,
            "source": f"calibrated: {denoiser.name or 'model'}, {steps} {denoise_args.get('scheduler', 'unipc')} "
                      f"steps, guidance {guidance:g}"}
