"""VAE encode/decode nodes (latents normalised with the VAE's mean/std here)."""
from __future__ import annotations

import numpy as np

from graphrt import Input, Node, Output, register_node


@register_node
class WanVAEDecode(Node):
    CATEGORY = "latent/wan"
    DESCRIPTION = "Decodes a latent to frames [N, H, W, 3] in 0..1 (tiled: spatial tiles, for large videos)."
    INPUTS = [Input("vae", "VAE"), Input("latent", "LATENT"),
              Input("tiled", "BOOLEAN", default=False, tooltip="Decode in overlapping spatial tiles to save memory.")]
    OUTPUTS = [Output("images", "IMAGE")]

    def execute(self, ctx, vae, latent, tiled=False):
        from .wan.pipelines.latent_space import is_normalized
        from .wan.pipelines.pipeline import decode_latents
        frames = decode_latents(vae, latent["samples"], tiled=tiled, normalized=is_normalized(latent))
        return (frames.reshape((-1,) + frames.shape[2:]),)


@register_node
class WanVAEEncode(Node):
    CATEGORY = "latent/wan"
    DISK_CACHE = True       # a latent: cheap to store, costly to recompute (survives restarts)
    DESCRIPTION = "Encodes frames [N, H, W, 3] (N = 4k+1) to a normalised latent (the posterior mean)."
    INPUTS = [Input("vae", "VAE"), Input("images", "IMAGE"),
              Input("tiled", "BOOLEAN", default=False)]
    OUTPUTS = [Output("latent", "LATENT")]

    def execute(self, ctx, vae, images, tiled=False):
        import mindspore as ms
        frames = np.asarray(images, np.float32)
        video = ms.Tensor(frames.transpose(3, 0, 1, 2)[None] * 2.0 - 1.0).astype(vae.dtype)
        posterior = vae.encode(video, tiled=tiled) if tiled else vae.encode(video)
        return ({"samples": vae.normalize_latents(posterior.mean).astype(ms.float32), "normalized": True},)
