"""ComfyUI's sampling nodes: ModelSamplingSD3, KSampler, KSamplerAdvanced, SamplerCustom, KSamplerSelect,
BasicScheduler -- ComfyUI's class names, input names, defaults, ranges and widget order (UI files give
widget values by position), its output types, and its numbers: the work is
`nodes.wan.pipelines.comfy_sampling` (see there for what equals ComfyUI and how).

MODEL is our WanDenoiser, CONDITIONING our WanConditioning, SAMPLER a `ComfySampler`, SIGMAS a 1-D
float32 numpy array. LATENT in: either space (`"normalized"`); out: raw VAE latents
(`"normalized": False`), as ComfyUI's nodes hold them.
"""
from __future__ import annotations

from graphrt import Input, Node, Output, register_node

from ..wan.pipelines.comfy_sampling import (SAMPLER_NAMES, SCHEDULERS, STEP_CACHE_STATS, ComfySampler,
                                            basic_sigmas, ksampler, sample_custom, with_model_sampling)

SEED_MAX = 2**64 - 1      # ComfyUI's 0xffffffffffffffff; torch seeds its generator from the low 32 bits


def _seed(name: str, tooltip: str = "") -> Input:
    # The editor's `control_after_generate` value that follows this widget in a UI file is skipped on
    # import by name (graphrt.ui_format.SEED_NAMES): "seed" and "noise_seed" are ComfyUI's names.
    return Input(name, "INT", default=0, min=0, max=SEED_MAX, tooltip=tooltip)


def _progress(ctx):
    """The samplers' per-step callback as node progress, with a latent preview of the step's denoised
    estimate when someone watches (the server's web page); an interrupt stops at the next step."""
    def step_done(step, denoised, x, total):
        if ctx.wants_preview:
            from ..wan.pipelines.latent_preview import latent_preview
            picture = latent_preview(denoised)
            if picture is not None:
                ctx.preview(picture)
        ctx.progress(step + 1, total)
    return step_done


def _reported(ctx, latent: dict) -> dict:
    """A MODEL with a step cache (WanApplyStepCache): what it skipped goes in the run report."""
    if STEP_CACHE_STATS in latent:
        ctx.metrics(step_cache=latent[STEP_CACHE_STATS])
    return latent


@register_node
class ModelSamplingSD3(Node):
    CATEGORY = "advanced/model"
    DESCRIPTION = ("Samples the model as a discrete flow with this shift "
                   "(sigma = shift·t / (1 + (shift−1)·t)).")
    INPUTS = [
        Input("model", "MODEL"),
        Input("shift", "FLOAT", default=3.0, min=0.0, max=100.0, step=0.01),
    ]
    OUTPUTS = [Output("MODEL", "MODEL")]

    def execute(self, ctx, model, shift):
        return (with_model_sampling(model, shift),)


_SAMPLER_TIP = ("The algorithm used when sampling, this can affect the quality, speed, and style of the generated "
                "output.")
_SCHEDULER_TIP = "The scheduler controls how noise is gradually removed to form the image."


@register_node
class KSampler(Node):
    DISK_CACHE = True       # small and costly to recompute: kept across restarts (graphrt.disk_cache)
    CATEGORY = "sampling"
    DESCRIPTION = "Uses the provided model, positive and negative conditioning to denoise the latent image."
    INPUTS = [
        Input("model", "MODEL", tooltip="The model used for denoising the input latent."),
        _seed("seed", "The random seed used for creating the noise."),
        Input("steps", "INT", default=20, min=1, max=10000,
              tooltip="The number of steps used in the denoising process."),
        Input("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1,
              tooltip="The Classifier-Free Guidance scale balances creativity and adherence to the prompt."),
        Input("sampler_name", SAMPLER_NAMES, default=SAMPLER_NAMES[0], tooltip=_SAMPLER_TIP),
        Input("scheduler", SCHEDULERS, default=SCHEDULERS[0], tooltip=_SCHEDULER_TIP),
        Input("positive", "CONDITIONING",
              tooltip="The conditioning describing the attributes you want to include in the image."),
        Input("negative", "CONDITIONING",
              tooltip="The conditioning describing the attributes you want to exclude from the image."),
        Input("latent_image", "LATENT", tooltip="The latent image to denoise."),
        Input("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01,
              tooltip="The amount of denoising applied, lower values will maintain the structure of the "
                      "initial image allowing for image to image sampling."),
    ]
    OUTPUTS = [Output("LATENT", "LATENT", tooltip="The denoised latent.")]

    def execute(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0):
        return (_reported(ctx, ksampler(
            model, latent_image, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
            positive=positive, negative=negative, denoise=denoise, callback=_progress(ctx))),)


@register_node
class KSamplerAdvanced(Node):
    DISK_CACHE = True       # small and costly to recompute: kept across restarts (graphrt.disk_cache)
    CATEGORY = "sampling"
    DESCRIPTION = ("Steps [start_at_step, end_at_step) of a `steps`-step schedule. Two of them chain the Wan2.2 "
                   "experts: high-noise 0→K with leftover noise, then low-noise K→end without adding noise.")
    INPUTS = [
        Input("model", "MODEL"),
        Input("add_noise", ["enable", "disable"], default="enable"),
        _seed("noise_seed"),
        Input("steps", "INT", default=20, min=1, max=10000),
        Input("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1),
        Input("sampler_name", SAMPLER_NAMES, default=SAMPLER_NAMES[0]),
        Input("scheduler", SCHEDULERS, default=SCHEDULERS[0]),
        Input("positive", "CONDITIONING"),
        Input("negative", "CONDITIONING"),
        Input("latent_image", "LATENT"),
        Input("start_at_step", "INT", default=0, min=0, max=10000),
        Input("end_at_step", "INT", default=10000, min=0, max=10000),
        Input("return_with_leftover_noise", ["disable", "enable"], default="disable"),
    ]
    OUTPUTS = [Output("LATENT", "LATENT")]

    def execute(self, ctx, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        return (_reported(ctx, ksampler(
            model, latent_image, seed=noise_seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
            scheduler=scheduler, positive=positive, negative=negative, add_noise=add_noise == "enable",
            start_step=start_at_step, last_step=end_at_step,
            force_full_denoise=return_with_leftover_noise != "enable", callback=_progress(ctx))),)


@register_node
class SamplerCustom(Node):
    DISK_CACHE = True       # small and costly to recompute: kept across restarts (graphrt.disk_cache)
    CATEGORY = "sampling/custom_sampling"
    DESCRIPTION = "Samples with a SAMPLER through explicit SIGMAS; also returns the last step's clean estimate."
    INPUTS = [
        Input("model", "MODEL"),
        Input("add_noise", "BOOLEAN", default=True),
        _seed("noise_seed"),
        Input("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1),
        Input("positive", "CONDITIONING"),
        Input("negative", "CONDITIONING"),
        Input("sampler", "SAMPLER"),
        Input("sigmas", "SIGMAS"),
        Input("latent_image", "LATENT"),
    ]
    OUTPUTS = [Output("output", "LATENT"), Output("denoised_output", "LATENT")]

    def execute(self, ctx, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        out, denoised = sample_custom(model, latent_image, add_noise=add_noise, seed=noise_seed, cfg=cfg,
                                      positive=positive, negative=negative, sampler=sampler, sigmas=sigmas,
                                      callback=_progress(ctx))
        return _reported(ctx, out), denoised


@register_node
class KSamplerSelect(Node):
    CATEGORY = "sampling/custom_sampling/samplers"
    DESCRIPTION = "A sampler by name, for SamplerCustom."
    INPUTS = [Input("sampler_name", SAMPLER_NAMES, default=SAMPLER_NAMES[0])]
    OUTPUTS = [Output("SAMPLER", "SAMPLER")]

    def execute(self, ctx, sampler_name):
        return (ComfySampler(sampler_name),)


@register_node
class BasicScheduler(Node):
    CATEGORY = "sampling/custom_sampling/schedulers"
    DESCRIPTION = "The model's sigmas for `steps` steps of a scheduler (the last `steps` of steps/denoise)."
    INPUTS = [
        Input("model", "MODEL"),
        Input("scheduler", SCHEDULERS, default=SCHEDULERS[0]),
        Input("steps", "INT", default=20, min=1, max=10000),
        Input("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
    ]
    OUTPUTS = [Output("SIGMAS", "SIGMAS")]

    def execute(self, ctx, model, scheduler, steps, denoise):
        return (basic_sigmas(model, scheduler, steps, denoise),)
