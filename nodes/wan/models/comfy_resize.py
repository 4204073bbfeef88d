"""Image resizing as ComfyUI does it, in numpy: torch's `interpolate` modes and comfy.utils.common_upscale.

ComfyUI resizes IMAGE / MASK tensors with `torch.nn.functional.interpolate` on float data
(no 8-bit round trip, except "lanczos", which goes through PIL at 8 bits), so its numbers differ
from those of diffusers' PIL-based processors. The helpers here follow torch's CPU kernels:

- "bilinear": align_corners=False, half-pixel centres, source clamped at 0, no antialiasing;
- "bicubic": Keys cubic with A = -0.75, indices clamped at the borders, no antialiasing;
- "nearest-exact": source = floor((i + 0.5) · in/out);
- "area": adaptive average pooling;
- `bicubic_antialias`: `interpolate(mode="bicubic", antialias=True)`, which is PIL's separable
  filter (A = -0.5, support widened by the scale when shrinking, weights normalised), used by
  ComfyUI's CLIP vision preprocessing;
- "lanczos": comfy.utils.lanczos — values truncated to uint8, PIL LANCZOS, back to float.

Arrays are float32 [N, C, H, W] unless noted.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def _linear_taps(n_in: int, n_out: int):
    scale = F32(n_in / n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=F32) + F32(0.5)) - F32(0.5), F32(0))
    i0 = src.astype(np.int64)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    lam1 = (src - i0).astype(F32)
    return i0, i1, F32(1) - lam1, lam1


def _bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, y1, wy0, wy1 = _linear_taps(x.shape[-2], h)
    x0, x1, wx0, wx1 = _linear_taps(x.shape[-1], w)
    top = x[..., y0, :]
    bot = x[..., y1, :]
    row = lambda r: r[..., x0] * wx0 + r[..., x1] * wx1   # noqa: E731
    return (row(top) * wy0[:, None] + row(bot) * wy1[:, None]).astype(F32)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """The 4 Keys-cubic weights for fractional offsets t (taps at -1, 0, 1, 2)."""
    def near(d):   # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):    # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1).astype(F32)


def _bicubic_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = x.shape[axis]
    scale = F32(n_in / n_out)
    real = scale * (np.arange(n_out, dtype=F32) + F32(0.5)) - F32(0.5)
    base = np.floor(real).astype(np.int64)
    w = _cubic_weights((real - base).astype(F32), -0.75)
    out = 0
    for k in range(4):
        idx = np.clip(base - 1 + k, 0, n_in - 1)
        shape = [1] * x.ndim
        shape[axis] = n_out
        out = out + np.take(x, idx, axis=axis) * w[:, k].reshape(shape)
    return out.astype(F32)


def _nearest_exact_index(n_in: int, n_out: int) -> np.ndarray:
    scale = F32(n_in / n_out)
    return np.minimum(np.floor((np.arange(n_out, dtype=F32) + F32(0.5)) * scale).astype(np.int64), n_in - 1)


def nearest_exact(x: np.ndarray, size: tuple) -> np.ndarray:
    """torch `interpolate(mode="nearest-exact")` over the trailing len(size) axes."""
    for k, n_out in enumerate(size):
        axis = x.ndim - len(size) + k
        x = np.take(x, _nearest_exact_index(x.shape[axis], n_out), axis=axis)
    return x


def _area_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = x.shape[axis]
    cols = []
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        cols.append(np.take(x, np.arange(a, b), axis=axis).mean(axis=axis, keepdims=True, dtype=np.float64))
    return np.concatenate(cols, axis=axis).astype(F32)


def _aa_weights(n_in: int, n_out: int, a: float = -0.5):
    """PIL / torch-antialias filter taps for one axis: (start indices, weights [n_out, taps])."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0

    def kernel(d):
        d = np.abs(d)
        return np.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                        np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
    taps = int(np.ceil(support)) * 2 + 1
    starts, weights = np.zeros(n_out, np.int64), np.zeros((n_out, taps), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = kernel((np.arange(lo, hi) - center + 0.5) * inv)
        total = w.sum()
        starts[i] = lo
        weights[i, :hi - lo] = w / total if total != 0 else w
    return starts, weights


def _aa_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = x.shape[axis]
    starts, weights = _aa_weights(n_in, n_out)
    x = np.moveaxis(x, axis, -1).astype(np.float64)
    padded = np.concatenate([x, np.zeros(x.shape[:-1] + (weights.shape[1],))], axis=-1)
    idx = starts[:, None] + np.arange(weights.shape[1])[None]
    out = (padded[..., idx] * weights).sum(-1)
    return np.moveaxis(out, -1, axis).astype(F32)


def bicubic_antialias(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """torch `interpolate(x, (h, w), mode="bicubic", antialias=True)` (width pass, then height)."""
    return _aa_axis(_aa_axis(x, w, x.ndim - 1), h, x.ndim - 2)


def lanczos_8bit(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """comfy.utils.lanczos: each image truncated to uint8, PIL LANCZOS to w×h, back to 0..1."""
    from PIL import Image
    out = []
    for img in x:
        arr = np.clip(255.0 * np.moveaxis(img, 0, -1), 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        res = np.asarray(pil.resize((w, h), resample=Image.Resampling.LANCZOS), np.float32) / 255.0
        out.append(np.moveaxis(res[..., None] if res.ndim == 2 else res, -1, 0))
    return np.stack(out).astype(F32)


def interpolate(x: np.ndarray, h: int, w: int, method: str) -> np.ndarray:
    """[N, C, H, W] to [N, C, h, w] with one of METHODS."""
    x = np.asarray(x, F32)
    if method == "bilinear":
        return _bilinear(x, h, w)
    if method == "bicubic":
        return _bicubic_axis(_bicubic_axis(x, h, x.ndim - 2), w, x.ndim - 1)
    if method == "nearest-exact":
        return nearest_exact(x, (h, w))
    if method == "area":
        return _area_axis(_area_axis(x, h, x.ndim - 2), w, x.ndim - 1)
    if method == "lanczos":
        return lanczos_8bit(x, h, w)
    raise ValueError(f"unknown resize method {method!r}; one of {', '.join(METHODS)}")


def center_crop_box(old_w: int, old_h: int, width: int, height: int) -> tuple[int, int]:
    """(x, y) margins that give the target aspect ratio, as common_upscale computes them."""
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x, y


def common_upscale(x: np.ndarray, width: int, height: int, method: str, crop: str) -> np.ndarray:
    """comfy.utils.common_upscale: [N, C, H, W] (or [N, C, T, H, W], frames resized alike) to
    width×height; crop "center" first trims the sides to the target aspect ratio."""
    x = np.asarray(x, F32)
    shape5 = x.shape if x.ndim == 5 else None
    if shape5 is not None:
        n, c, t = shape5[:3]
        x = x.transpose(0, 2, 1, 3, 4).reshape(n * t, c, shape5[3], shape5[4])
    if crop == "center":
        mx, my = center_crop_box(x.shape[-1], x.shape[-2], width, height)
        x = x[..., my:x.shape[-2] - my, mx:x.shape[-1] - mx]
    out = interpolate(x, height, width, method)
    if shape5 is not None:
        out = out.reshape(n, t, c, height, width).transpose(0, 2, 1, 3, 4)
    return out


def resize_frames(frames: np.ndarray, width: int, height: int, method: str = "bilinear",
                  crop: str = "center") -> np.ndarray:
    """IMAGE [N, H, W, C] (or MASK [N, H, W]) through common_upscale, same layout back."""
    frames = np.asarray(frames, F32)
    if frames.ndim == 3:
        return common_upscale(frames[:, None], width, height, method, crop)[:, 0]
    return common_upscale(frames.transpose(0, 3, 1, 2), width, height, method, crop).transpose(0, 2, 3, 1)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: np.ndarray, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD, crop: bool = True):
    """comfy/clip_vision.py clip_preprocess: IMAGE [N, H, W, C] → pixel values [N, 3, size, size].
    crop: shortest side to `size` then centre crop; else squash to size×size. Antialiased bicubic,
    then quantised to 8-bit levels, then normalised."""
    x = np.asarray(images, F32)[..., :3].transpose(0, 3, 1, 2)
    if x.shape[2] != size or x.shape[3] != size:
        if crop:
            scale = size / min(x.shape[2], x.shape[3])
            new_h, new_w = round(scale * x.shape[2]), round(scale * x.shape[3])
        else:
            new_h = new_w = size
        x = bicubic_antialias(x, new_h, new_w)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = np.round(np.clip(F32(255.0) * x, 0, 255)) / F32(255.0)
    mean = np.asarray(mean, F32).reshape(1, 3, 1, 1)
    std = np.asarray(std, F32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(F32)
