"""ComfyUI's latent nodes for Wan: EmptyHunyuanLatentVideo, Wan22ImageToVideoLatent, TrimVideoLatent,
VAEEncode, VAEDecode, VAEDecodeTiled. LATENTs made here hold raw VAE latents (`"normalized": False`)."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from graphrt import Input, Node, Output, register_node

from .comfy_conditioning_nodes import MAX_RESOLUTION, raw_latent


def _raw(latent: dict):
    """The samples of a LATENT of either convention as raw VAE latents (MindSpore tensor)."""
    import mindspore as ms
    from ..wan.pipelines.latent_space import raw_samples
    x = latent["samples"]
    if not isinstance(x, ms.Tensor):
        latent = {**latent, "samples": ms.Tensor(np.asarray(x, np.float32))}
    return raw_samples(latent)


def decode_frames(vae, latent: dict, tiled: bool = False) -> np.ndarray:
    """ComfyUI's VAE.decode then VAEDecode's reshape: frames [B·T, H, W, 3] = clamp((x + 1) / 2, 0, 1)."""
    import mindspore as ms
    z = _raw(latent).astype(vae.dtype)
    video = vae.decode(z, tiled=tiled).astype(ms.float32).asnumpy()       # [B, 3, F, H, W]
    frames = np.clip((video + np.float32(1.0)) / np.float32(2.0), 0.0, 1.0).transpose(0, 2, 3, 4, 1)
    return np.ascontiguousarray(frames.reshape((-1,) + frames.shape[2:]))


@register_node
class EmptyHunyuanLatentVideo(Node):
    CATEGORY = "latent/video"
    DESCRIPTION = "An empty (all-zero) video latent [B, 16, (length−1)/4 + 1, H/8, W/8], as the Wan templates use."
    INPUTS = [Input("width", "INT", default=848, min=16, max=MAX_RESOLUTION, step=16),
              Input("height", "INT", default=480, min=16, max=MAX_RESOLUTION, step=16),
              Input("length", "INT", default=25, min=1, max=MAX_RESOLUTION, step=4),
              Input("batch_size", "INT", default=1, min=1, max=4096)]
    OUTPUTS = [Output("LATENT", "LATENT")]

    def execute(self, ctx, width, height, length, batch_size=1):
        shape = (batch_size, 16, (length - 1) // 4 + 1, height // 8, width // 8)
        return ({**raw_latent(np.zeros(shape, np.float32)), "empty": True},)


@register_node
class Wan22ImageToVideoLatent(Node):
    CATEGORY = "conditioning/inpaint"
    DESCRIPTION = ("The Wan2.2 TI2V-5B latent (48 channels, /16): empty for text-to-video; with a start image, its "
                   "latent in front and a noise_mask that keeps it while the rest is sampled.")
    INPUTS = [Input("vae", "VAE"),
              Input("width", "INT", default=1280, min=32, max=MAX_RESOLUTION, step=32),
              Input("height", "INT", default=704, min=32, max=MAX_RESOLUTION, step=32),
              Input("length", "INT", default=49, min=1, max=MAX_RESOLUTION, step=4),
              Input("batch_size", "INT", default=1, min=1, max=4096),
              Input("start_image", "IMAGE", optional=True)]
    OUTPUTS = [Output("LATENT", "LATENT")]

    def execute(self, ctx, vae, width, height, length, batch_size=1, start_image=None):
        import mindspore as ms
        from ..wan.pipelines.comfy_conditioning import NOISE_MASK, wan22_image_to_video_latent
        out = wan22_image_to_video_latent(vae, width, height, length, batch_size, start_image)
        latent = raw_latent(out["samples"])
        if NOISE_MASK in out:
            latent[NOISE_MASK] = ms.Tensor(out[NOISE_MASK])
        else:
            latent["empty"] = True
        return (latent,)


@register_node
class TrimVideoLatent(Node):
    CATEGORY = "latent/video"
    DESCRIPTION = "Drops the first latent frames (WanVaceToVideo's reference frames) before decoding."
    INPUTS = [Input("samples", "LATENT"), Input("trim_amount", "INT", default=0, min=0, max=99999)]
    OUTPUTS = [Output("LATENT", "LATENT")]

    def execute(self, ctx, samples, trim_amount=0):
        n = samples["samples"].shape[2]
        if trim_amount >= n:
            raise ValueError(f"trim_amount {trim_amount} would drop all {n} latent frames")
        return ({**samples, "samples": samples["samples"][:, :, trim_amount:]},)


@register_node
class VAEEncode(Node):
    DISK_CACHE = True       # small and costly to recompute: kept across restarts (graphrt.disk_cache)
    CATEGORY = "latent"
    DESCRIPTION = "Encodes frames [N, H, W, 3] (one video; 4k+1 frames are used) to a raw latent (the posterior mean)."
    INPUTS = [Input("pixels", "IMAGE"), Input("vae", "VAE")]
    OUTPUTS = [Output("LATENT", "LATENT")]

    def execute(self, ctx, pixels, vae):
        from ..wan.pipelines.comfy_conditioning import vae_encode
        return (raw_latent(vae_encode(vae, pixels)),)


@register_node
class VAEDecode(Node):
    CATEGORY = "latent"
    DESCRIPTION = "Decodes latent images back into pixel space images: video frames [B·T, H, W, 3]."
    INPUTS = [Input("samples", "LATENT", tooltip="The latent to be decoded."),
              Input("vae", "VAE", tooltip="The VAE model used for decoding the latent.")]
    OUTPUTS = [Output("IMAGE", "IMAGE", tooltip="The decoded image.")]

    def execute(self, ctx, samples, vae):
        return (decode_frames(vae, samples),)


@contextmanager
def _tiles(vae, tile: int, overlap: int):
    """The VAE's spatial tiling set to tile×tile pixels with `overlap`, restored afterwards (the VAE
    object is shared through the cache)."""
    names = ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
             "tile_sample_stride_width")
    saved = {n: getattr(vae, n) for n in names}
    stride = max(tile - overlap, vae.spatial_compression)
    for n, v in zip(names, (tile, tile, stride, stride)):
        setattr(vae, n, v)
    try:
        yield vae
    finally:
        for n, v in saved.items():
            setattr(vae, n, v)


@register_node
class VAEDecodeTiled(Node):
    CATEGORY = "_for_testing"
    DESCRIPTION = ("Decodes in overlapping spatial tiles of tile_size pixels to save memory. The temporal settings "
                   "are accepted for ComfyUI's workflows; the decoder here already runs one latent frame at a time. "
                   "Tiles are blended as diffusers' Wan VAE does, so the seams differ slightly from ComfyUI's.")
    INPUTS = [Input("samples", "LATENT"), Input("vae", "VAE"),
              Input("tile_size", "INT", default=512, min=64, max=4096, step=32),
              Input("overlap", "INT", default=64, min=0, max=4096, step=32),
              Input("temporal_size", "INT", default=64, min=8, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to decode at a time."),
              Input("temporal_overlap", "INT", default=8, min=4, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to overlap.")]
    OUTPUTS = [Output("IMAGE", "IMAGE")]

    def execute(self, ctx, samples, vae, tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8):
        if tile_size < overlap * 4:       # ComfyUI's own guard
            overlap = tile_size // 4
        with _tiles(vae, tile_size, overlap):
            return (decode_frames(vae, samples, tiled=True),)
