"""The denoise node: schedulers, classifier-free guidance, Wan2.2 expert switch,
and stages that chain exactly."""
from __future__ import annotations

from graphrt import Input, Node, Output, register_node

from .latent_nodes import noise_for


def _check_inputs(model, latent_channels: int, positive) -> None:
    """Errors that name the node input to fix rather than tensor shapes."""
    concat = positive.concat_channels
    if latent_channels + concat != model.in_channels:
        if concat == 0 and model.in_channels > latent_channels:
            raise ValueError(f"the model is an image-to-video model ({model.in_channels} input channels): feed "
                             "WanDenoise the positive, negative and latent outputs of WanImageConditioning")
        raise ValueError(f"the latent has {latent_channels} channels"
                         + (f" and the image conditioning {concat}" if concat else "")
                         + f" but the model takes {model.in_channels}; use the matching VAE for the latent")
    if model.config.get("image_dim") is not None and positive.image_embeds is None:
        raise ValueError("this model needs CLIP image embeddings but the conditioning has none: connect a "
                         "WanCLIPVisionEncode output to WanImageConditioning's `clip_vision_output` input")


def _previewer(ctx):
    """The step's latents as a picture for whoever watches (the server's web page), else nothing."""
    if not ctx.wants_preview:
        return None

    def show(x):
        from .wan.pipelines.latent_preview import latent_preview
        picture = latent_preview(x)
        if picture is not None:
            ctx.preview(picture)
    return show


@register_node
class WanDenoise(Node):
    CATEGORY = "sampling/wan"
    DISK_CACHE = True       # the denoised latent: small, and the costliest output to recompute
    DESCRIPTION = ("Denoises a latent with a Wan model. Steps [start_step, end_step) of a `steps`-step schedule; "
                   "a stage that stops early hands its full sampler state to the next stage, so split runs equal "
                   "one run. Two-expert models (Wan2.2 A14B) switch experts at their boundary timestep.")
    INPUTS = [
        Input("model", "MODEL"),
        Input("positive", "CONDITIONING"),
        Input("latent", "LATENT"),
        Input("seed", "INT", default=0, min=0, max=2**64 - 1, tooltip="Seeds numpy's generator for the noise."),
        Input("steps", "INT", default=50, min=1, max=1000),
        Input("guidance", "FLOAT", default=5.0, min=0.0, max=100.0, step=0.1,
              tooltip="Classifier-free guidance scale; 1.0 skips the unconditional pass."),
        Input("scheduler", ["unipc", "euler"], default="unipc",
              tooltip="unipc: UniPC flow multistep as the Wan -Diffusers repos configure it; euler: flow-match Euler."),
        Input("shift", "FLOAT", default=0.0, min=0.0, max=100.0, step=0.1,
              tooltip="Flow shift; 0 uses the model's own (scheduler_config.json flow_shift)."),
        Input("negative", "CONDITIONING", optional=True, tooltip="Needed when guidance > 1."),
        Input("guidance_2", "FLOAT", optional=True, default=0.0, min=0.0, max=100.0, step=0.1,
              tooltip="Guidance of the low-noise expert (Wan2.2 A14B); 0 = same as guidance."),
        Input("start_step", "INT", optional=True, default=0, min=0, max=10000),
        Input("end_step", "INT", optional=True, default=10000, min=0, max=10000),
        Input("add_noise", "BOOLEAN", optional=True, default=True,
              tooltip="Noise the input latent to start_step's level (off to continue a previous stage)."),
        Input("return_with_leftover_noise", "BOOLEAN", optional=True, default=True,
              tooltip="When stopping before the last step: hand on the noisy latent and sampler state (on), "
                      "or return the model's clean estimate (off)."),
        Input("noise", "NOISE", optional=True, tooltip="Explicit initial noise; overrides the seed."),
        Input("step_cache", "STEP_CACHE", optional=True,
              tooltip="From WanStepCache: skip transformer work on steps whose output barely changes. The output "
                      "LATENT's `step_cache_stats` counts the skipped transformer evaluations."),
    ]
    OUTPUTS = [Output("latent", "LATENT")]

    @classmethod
    def validate_inputs(cls, start_step=0, end_step=10000, steps=50, **_):
        if start_step >= min(end_step, steps):
            return f"start_step {start_step} leaves no step to run (end_step {end_step}, steps {steps})"
        return None

    def execute(self, ctx, model, positive, latent, seed, steps, guidance, scheduler, shift, negative=None,
                guidance_2=0.0, start_step=0, end_step=10000, add_noise=True, return_with_leftover_noise=True,
                noise=None, step_cache=None):
        from .wan.pipelines.latent_space import normalized_samples
        from .wan.pipelines.sampling import denoise
        from .wan.pipelines.step_cache import StepCacheSession
        samples = normalized_samples(latent)
        _check_inputs(model, samples.shape[1], positive)
        if guidance > 1.0 and negative is None:
            raise ValueError("guidance > 1 needs a negative conditioning (an empty-prompt text encode gives "
                             "diffusers' default)")
        state = latent.get("sampler_state")
        resume = state is not None and not add_noise
        step_cache = step_cache if step_cache is not None else model.step_cache    # WanApplyStepCache's
        session = StepCacheSession(step_cache) if step_cache is not None and step_cache.active else None
        x, new_state = denoise(
            model, positive, negative, steps=steps, guidance=guidance, guidance_2=guidance_2 or None,
            scheduler=scheduler, shift=shift or None,
            latents=None if latent.get("empty") else samples,
            noise=noise_for(noise, seed, tuple(samples.shape)) if add_noise and not resume else None,
            start_step=start_step, end_step=end_step, add_noise=add_noise and not resume,
            state=state if resume else None, leftover_noise=return_with_leftover_noise,
            callback=ctx.progress, step_cache=session, on_latents=_previewer(ctx))
        out = {"samples": x, "normalized": True}
        if session is not None:   # in the run report, and with the latent for scripts that only keep outputs
            out["step_cache_stats"] = session.stats()
            ctx.metrics(step_cache=out["step_cache_stats"])
        if new_state is not None:
            out["sampler_state"] = new_state
        return (out,)
