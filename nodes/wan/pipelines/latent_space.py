"""Which space a LATENT's samples are in, and the move between the two.

Our Wan nodes keep latents normalised with the VAE's per-channel mean/std (the space the
scheduler steps, diffusers' `output_type="latent"`); ComfyUI's nodes keep raw VAE latents and
normalise inside the model (`latent_format.process_in`). A LATENT dict says which it holds with
`"normalized"`, so a graph may mix both families and no node guesses. A dict without the key is
one of ours (normalised), as every LATENT was before ComfyUI's nodes existed.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms

from ..checkpoints.presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

NORMALIZED = "normalized"
_STATS = {16: (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD), 48: (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD)}


def is_normalized(latent: dict) -> bool:
    return bool(latent.get(NORMALIZED, True))


def latent_stats(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std, shaped [1, C, 1, 1, 1], of the Wan VAE with `channels` latent channels."""
    if channels not in _STATS:
        raise ValueError(f"no Wan VAE has {channels} latent channels (Wan2.1: 16, Wan2.2: 48)")
    mean, std = _STATS[channels]
    shape = (1, channels, 1, 1, 1)
    return np.asarray(mean, np.float32).reshape(shape), np.asarray(std, np.float32).reshape(shape)


def normalized_samples(latent: dict) -> ms.Tensor:
    """The samples in the model's normalised space, whichever space the dict holds."""
    x = latent["samples"]
    if is_normalized(latent):
        return x
    mean, std = latent_stats(int(x.shape[1]))
    # the same order of operations as the VAE's normalize_latents: (z - mean) * (1 / std)
    return (x - ms.Tensor(mean)) * ms.Tensor(1.0 / std)


def raw_samples(latent: dict) -> ms.Tensor:
    """The samples as the VAE decodes them, whichever space the dict holds."""
    x = latent["samples"]
    if not is_normalized(latent):
        return x
    mean, std = latent_stats(int(x.shape[1]))
    return x / ms.Tensor(1.0 / std) + ms.Tensor(mean)
