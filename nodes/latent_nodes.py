"""Latent creation and noise nodes.

LATENT values are dicts `{"samples": [B, C, T, H, W]}` in the model's
normalised latent space (what the scheduler steps, what diffusers returns for
`output_type="latent"`), marked `"normalized": True`; VAE encode/decode apply the VAE's
mean/std. ComfyUI's nodes hold raw VAE latents (`"normalized": False`); every consumer
converts through `nodes.wan.pipelines.latent_space`. An empty
latent carries `"empty": True`: denoising starts from pure noise, as the
text-to-video pipelines do.
"""
from __future__ import annotations

import numpy as np

from graphrt import Input, Node, Output, register_node

from .fingerprint import file_digest

SIZE_MULTIPLE = 16


def nearest_multiples(value: int, multiple: int) -> list[int]:
    lo = max(multiple, value // multiple * multiple)
    return sorted({lo, lo + multiple})


def nearest_frame_counts(n: int) -> list[int]:
    lo = max(1, (n - 1) // 4 * 4 + 1)
    return sorted({lo, lo + 4})


def check_video_size(width: int, height: int, num_frames: int, multiple: int = SIZE_MULTIPLE) -> list[str]:
    errors = []
    for name, v in (("width", width), ("height", height)):
        if v % multiple:
            errors.append(f"{name} {v} is not a multiple of {multiple}; nearest valid: "
                          f"{' or '.join(map(str, nearest_multiples(v, multiple)))}")
    if (num_frames - 1) % 4:
        errors.append(f"num_frames {num_frames} is not of the form 4k+1; nearest valid: "
                      f"{' or '.join(map(str, nearest_frame_counts(num_frames)))}")
    return errors


@register_node
class WanEmptyLatentVideo(Node):
    CATEGORY = "latent/wan"
    DESCRIPTION = "An empty video latent for text-to-video: sizes multiples of 16, frame counts 4k+1."
    INPUTS = [
        Input("width", "INT", default=832, min=16, max=8192, step=16),
        Input("height", "INT", default=480, min=16, max=8192, step=16),
        Input("num_frames", "INT", default=81, min=1, max=10001, step=4, tooltip="4k+1 frames (81 = 5 s at 16 fps)."),
        Input("batch", "INT", default=1, min=1, max=64),
        Input("vae", "VAE", optional=True,
              tooltip="Sets channels and compression (Wan2.2 TI2V VAE: 48 channels, /16). Default: Wan2.1 VAE."),
    ]
    OUTPUTS = [Output("latent", "LATENT")]

    @classmethod
    def validate_inputs(cls, width=832, height=480, num_frames=81, **_):
        return check_video_size(width, height, num_frames) or None

    def execute(self, ctx, width, height, num_frames, batch=1, vae=None):
        import mindspore as ms
        z, s, t = (16, 8, 4) if vae is None else (vae.z_dim, vae.spatial_compression, vae.temporal_compression)
        errors = check_video_size(width, height, num_frames, multiple=max(SIZE_MULTIPLE, 2 * s))
        if errors:
            raise ValueError("; ".join(errors))
        shape = (batch, z, (num_frames - 1) // t + 1, height // s, width // s)
        return ({"samples": ms.Tensor(np.zeros(shape, np.float32)), "empty": True, "normalized": True},)


class SeedNoise:
    """Noise drawn on demand from a seed, in whatever shape the latent has."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def generate(self, shape) -> np.ndarray:
        from .wan.pipelines.noise import make_noise
        return make_noise(self.seed, shape)


def noise_for(noise, seed: int, shape) -> np.ndarray:
    """The initial noise for a latent of `shape`: an explicit tensor (checked) or seeded."""
    if noise is None:
        noise = SeedNoise(seed)
    if isinstance(noise, SeedNoise):
        return noise.generate(shape)
    arr = np.asarray(noise.asnumpy() if hasattr(noise, "asnumpy") else noise, dtype=np.float32)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"the NOISE input has shape {tuple(arr.shape)} but the latent is {tuple(shape)}")
    return arr


@register_node
class WanRandomNoise(Node):
    CATEGORY = "sampling/noise"
    DESCRIPTION = "Seeded noise (numpy PCG64): the same seed gives the same noise on every device."
    INPUTS = [Input("seed", "INT", default=0, min=0, max=2**64 - 1)]
    OUTPUTS = [Output("noise", "NOISE")]

    def execute(self, ctx, seed):
        return (SeedNoise(seed),)


@register_node
class WanLoadNoise(Node):
    CATEGORY = "sampling/noise"
    DESCRIPTION = ("Initial noise from a .npy or .safetensors file, e.g. the `latents=` another implementation "
                   "used, so both runs can be compared exactly.")
    INPUTS = [Input("path", "STRING", default=""),
              Input("key", "STRING", default="", tooltip="Tensor name inside a .safetensors file with several.")]
    OUTPUTS = [Output("noise", "NOISE")]

    @classmethod
    def fingerprint(cls, path="", **_):
        return file_digest(path)

    def execute(self, ctx, path, key=""):
        from .wan.media import load_tensor
        return (load_tensor(path, key or None).astype(np.float32),)
