"""Frames as the models take them: one image (array in 0..1, uint8, or PIL) to uint8 / PIL."""
from __future__ import annotations

import numpy as np


def as_uint8(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)


def to_pil(image):
    from PIL import Image
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(as_uint8(image)[..., :3])
