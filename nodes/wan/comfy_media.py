"""Image files as ComfyUI's LoadImage / SaveImage read and write them.

LoadImage (ComfyUI nodes.py) gives IMAGE and MASK: every frame of the file that has the first
frame's size (animated GIF / WebP / APNG give a batch; MPO files only their first frame), EXIF
orientation applied, 16-bit "I" images scaled by 1/255, RGB as float32 in 0..1; the MASK is
1 − alpha (or 1 − the palette transparency), and [1, 64, 64] zeros when the image has none.
SaveImage writes each image as an 8-bit PNG, levels truncated (`np.clip(255 * x).astype(uint8)`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .media import atomic_path


def load_image_with_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(IMAGE [N, H, W, 3], MASK [N, H, W] or [1, 64, 64]) of an image file, as ComfyUI's LoadImage."""
    from PIL import Image, ImageOps, ImageSequence

    images, masks, size = [], [], None
    with Image.open(path) as img:
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue
            images.append(np.asarray(rgb, np.float32) / 255.0)
            if "A" in frame.getbands():
                masks.append(1.0 - np.asarray(frame.getchannel("A"), np.float32) / 255.0)
            elif frame.mode == "P" and "transparency" in frame.info:
                masks.append(1.0 - np.asarray(frame.convert("RGBA").getchannel("A"), np.float32) / 255.0)
            else:
                masks.append(np.zeros((64, 64), np.float32))
        single = len(images) == 1 or img.format == "MPO"
    if not images:
        raise ValueError(f"{path} holds no image")
    if single:
        return images[0][None], masks[0][None]
    if len({m.shape for m in masks}) > 1:   # mixed alpha / no alpha frames: as ComfyUI, cat needs one size
        raise ValueError(f"{path}: frames with and without transparency cannot form one MASK batch")
    return np.stack(images), np.stack(masks)


def save_png(image: np.ndarray, path: str | os.PathLike, compress_level: int = 4) -> Path:
    """One IMAGE frame [H, W, 3] (or [H, W]) as an 8-bit PNG, levels truncated as ComfyUI does."""
    from PIL import Image

    arr = np.clip(255.0 * np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=compress_level)
    return path


WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def save_animated_webp(frames: np.ndarray, path: str | os.PathLike, fps: float, lossless: bool, quality: int,
                       method: str = "default") -> Path:
    """Frames [N, H, W, 3] as an animated WebP, as ComfyUI's SaveAnimatedWEBP writes it (levels truncated,
    frame duration int(1000 / fps) ms, PIL's method 0 / 4 / 6 for fastest / default / slowest)."""
    from PIL import Image

    arr = np.clip(255.0 * np.asarray(frames, np.float32), 0, 255).astype(np.uint8)
    images = [Image.fromarray(f) for f in arr]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="WEBP", save_all=True, duration=int(1000.0 / fps), append_images=images[1:],
                       lossless=lossless, quality=quality, method=WEBP_METHODS[method])
    return path
