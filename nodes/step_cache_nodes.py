"""Step caching nodes: WanStepCache (the STEP_CACHE input of WanDenoise), WanApplyStepCache (a MODEL
that samples with it in any sampler, ComfyUI's KSampler family included) and WanStepCacheCalibrate
(MagCache's per-step ratios for a model, measured once by a reference sampling)."""
from __future__ import annotations

from graphrt import Input, Node, Output, register_node

from .latent_nodes import noise_for
from .wan.pipelines.mag_ratios import PRESETS
from .wan.pipelines.step_cache import MODES


@register_node
class WanStepCache(Node):
    CATEGORY = "sampling/wan"
    DESCRIPTION = ("Faster sampling by skipping transformer work on steps whose output barely changes. magcache: "
                   "reuse the blocks' last residual while the error predicted from the model's per-step magnitude "
                   "ratios stays under the threshold; first_block: run the first block and reuse the other "
                   "blocks' residual when the first block's output changed less than the threshold. Both keep the "
                   "first steps, reset at the Wan2.2 expert switch, decide CFG's passes together and chain across "
                   "split WanDenoise stages. Threshold 0 gives the uncached result.")
    INPUTS = [
        Input("mode", list(MODES), default="off"),
        Input("threshold", "FLOAT", default=0.12, min=0.0, max=100.0, step=0.01,
              tooltip="magcache: accumulated error bound (MagCache's Wan settings: 0.06-0.24); first_block: "
                      "relative change of the first block's residual (diffusers' default 0.05). 0 never skips."),
        Input("max_consecutive_skips", "INT", default=2, min=0, max=1000,
              tooltip="Steps skipped in a row at most before one is computed again (MagCache's K)."),
        Input("retention", "FLOAT", default=0.2, min=0.0, max=1.0, step=0.01,
              tooltip="Fraction of each expert's first steps that always run."),
        Input("ratios", "MAG_RATIOS", optional=True,
              tooltip="magcache: ratios from WanStepCacheCalibrate; when absent, ratios_preset."),
        Input("ratios_preset", ["auto"] + sorted(PRESETS), optional=True, default="auto",
              tooltip="magcache without `ratios`: MagCache's published ratios (github.com/Zehong-Ma/MagCache); "
                      "auto picks them by the model's architecture and name."),
    ]
    OUTPUTS = [Output("step_cache", "STEP_CACHE")]

    def execute(self, ctx, mode, threshold, max_consecutive_skips, retention, ratios=None, ratios_preset="auto"):
        from .wan.pipelines.step_cache import StepCache
        return (StepCache(mode=mode, threshold=float(threshold), max_skips=int(max_consecutive_skips),
                          retention=float(retention), ratios=ratios, preset=ratios_preset),)


@register_node
class WanApplyStepCache(Node):
    CATEGORY = "sampling/wan"
    DESCRIPTION = ("The model, sampling with this step cache in every sampler it goes to: KSampler, "
                   "KSamplerAdvanced, SamplerCustom (as ComfyUI's MagCache/TeaCache model patches) and WanDenoise "
                   "(whose own step_cache input wins). A KSamplerAdvanced stage that starts where one with the same "
                   "model stopped continues its cache; another model (Wan2.2's low-noise expert) starts afresh. "
                   "The sampler's LATENT and the run report count the skipped transformer evaluations.")
    INPUTS = [Input("model", "MODEL"), Input("step_cache", "STEP_CACHE")]
    OUTPUTS = [Output("MODEL", "MODEL")]

    def execute(self, ctx, model, step_cache):
        return (model.with_(step_cache=step_cache if step_cache.active else None),)


@register_node
class WanStepCacheCalibrate(Node):
    CATEGORY = "sampling/wan"
    DESCRIPTION = ("Measures MagCache's per-step magnitude ratios for a model: one uncached sampling at the given "
                   "latent size and schedule. Its output is cached under its inputs like any node's (and kept on "
                   "disk when the cache has a disk tier), so it runs once per model, size and step count. Feed it "
                   "a fixed prompt, so that changing the workflow's prompt does not calibrate again.")
    DISK_CACHE = True
    INPUTS = [
        Input("model", "MODEL"),
        Input("positive", "CONDITIONING"),
        Input("latent", "LATENT"),
        Input("seed", "INT", default=0, min=0, max=2**64 - 1),
        Input("steps", "INT", default=50, min=1, max=1000),
        Input("guidance", "FLOAT", default=5.0, min=0.0, max=100.0, step=0.1),
        Input("scheduler", ["unipc", "euler"], default="unipc"),
        Input("shift", "FLOAT", default=0.0, min=0.0, max=100.0, step=0.1,
              tooltip="Flow shift; 0 uses the model's own."),
        Input("negative", "CONDITIONING", optional=True, tooltip="Needed when guidance > 1."),
        Input("guidance_2", "FLOAT", optional=True, default=0.0, min=0.0, max=100.0, step=0.1),
    ]
    OUTPUTS = [Output("ratios", "MAG_RATIOS")]

    def execute(self, ctx, model, positive, latent, seed, steps, guidance, scheduler, shift, negative=None,
                guidance_2=0.0):
        from .wan.pipelines.latent_space import normalized_samples
        from .wan.pipelines.step_cache_calibration import calibrate
        if guidance > 1.0 and negative is None:
            raise ValueError("guidance > 1 needs a negative conditioning")
        samples = normalized_samples(latent)
        ratios = calibrate(model, positive, negative, steps=steps, guidance=guidance,
                           guidance_2=guidance_2 or None, scheduler=scheduler, shift=shift or None,
                           latents=None if latent.get("empty") else samples,
                           noise=noise_for(None, seed, tuple(samples.shape)), callback=ctx.progress)
        return (ratios,)
