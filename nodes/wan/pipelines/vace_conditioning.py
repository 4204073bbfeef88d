"""The control input of Wan VACE models, as diffusers' `WanVACEPipeline` builds it (wan_models.md §5.4).

    control, n_refs = vace_control(vae, height, width, num_frames, video=frames, mask=mask_frames,
                                   reference_images=[image_a, image_b])    # sizes may differ

`control` [1, 96, n_refs + T', h, w] is what `WanVACETransformer3DModel` takes as
`control_hidden_states`: 32 channels of video latents (the part to keep and the part to
regenerate, encoded separately) and 64 channels packing each 8×8 pixel block of the mask,
with one latent frame per reference image in front. The noise latent must have the same
n_refs extra frames, which are dropped again before decoding.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms

VACE_CONTROL = "vace_control"        # WanConditioning.extras keys
VACE_STRENGTH = "vace_strength"


def _encode(vae, video: np.ndarray) -> np.ndarray:
    """Normalised posterior mean of video [1, 3, F, H, W] in [-1, 1]."""
    post = vae.encode(ms.Tensor(video.astype(np.float32)).astype(vae.dtype))
    return vae.normalize_latents(post.mean).astype(ms.float32).asnumpy()


def _bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """[C, H, W] resized to [C, h, w]: bilinear, half-pixel centres, no antialiasing (torch's
    `interpolate(mode="bilinear", align_corners=False)`, which the reference pipeline uses)."""
    c, H, W = img.shape

    def axis(n_out, n_in):
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, fy = axis(h, H)
    x0, x1, fx = axis(w, W)
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bottom = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def reference_array(image, index: int = 0) -> np.ndarray:
    """One reference image as [h, w, 3] float32 in 0..1: a PIL image, or an array [h, w, C] /
    [1, h, w, C] in 0..1 (C ≥ 3; extra channels such as alpha are dropped)."""
    if hasattr(image, "convert") and hasattr(image, "size"):           # PIL
        return np.asarray(image.convert("RGB"), np.float32) / 255.0
    a = np.asarray(image.asnumpy() if hasattr(image, "asnumpy") else image, np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[-1] < 3:
        raise ValueError(f"VACE reference image {index + 1} has shape {tuple(a.shape)}; expected one image "
                         f"[height, width, 3] (a batch of several images is several references: split it)")
    if min(a.shape[:2]) < 8:
        raise ValueError(f"VACE reference image {index + 1} is {a.shape[1]}×{a.shape[0]}; it needs at least 8×8 "
                         f"pixels (its size is floored to multiples of 8)")
    return a[..., :3]


def reference_canvas(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A reference image [h, w, 3] in 0..1, scaled to fit inside height×width and centred on a
    white canvas, as [3, height, width] in [-1, 1] (diffusers' `preprocess_conditions`: any size
    and aspect; each reference of a list is fitted on its own)."""
    image = reference_array(image)
    h, w = image.shape[:2]
    if h % 8 or w % 8:   # the reference's image processor first floors the size to multiples of 8 (lanczos)
        from PIL import Image
        from ..models.images import to_pil
        image = np.asarray(to_pil(image).resize((w - w % 8, h - h % 8), Image.LANCZOS), np.float32) / 255.0
    img = image.transpose(2, 0, 1) * 2.0 - 1.0
    h, w = img.shape[1:]
    scale = min(height / h, width / w)
    nh, nw = int(h * scale), int(w * scale)
    if nh < 1 or nw < 1:
        raise ValueError(f"a VACE reference image of {w}×{h} fitted into {width}×{height} would be {nw}×{nh} "
                         f"pixels; crop it to a less extreme aspect ratio")
    canvas = np.ones((3, height, width), np.float32)
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = _bilinear(img, nh, nw)
    return canvas


def pack_mask(mask: np.ndarray, latent_frames: int, spatial: int = 8) -> np.ndarray:
    """Mask [F, H, W] in 0..1 -> [64, T', H/8, W/8]: channel 8·dy + dx holds pixel (dy, dx) of
    each 8×8 block; time goes from F frames to T' by nearest-exact sampling."""
    f, h, w = mask.shape
    m = mask.reshape(f, h // spatial, spatial, w // spatial, spatial).transpose(2, 4, 0, 1, 3)
    m = m.reshape(spatial * spatial, f, h // spatial, w // spatial)
    idx = np.minimum(np.floor((np.arange(latent_frames) + 0.5) * (f / latent_frames)).astype(np.int64), f - 1)
    return m[:, idx]


def vace_control(vae, height: int, width: int, num_frames: int, video=None, mask=None,
                 reference_images=()) -> tuple[np.ndarray, int]:
    """(control [1, 96, n_refs + T', h, w], n_refs) for the given inputs.

    `video` [F, H, W, 3] in 0..1 (None: nothing to keep, all grey); `mask` [F, H, W(, C)] in 0..1,
    white = generate (None: generate everything); `reference_images`: a list of images, each of any
    size (see `reference_array`), in diffusers' `reference_images` order. Frames must already be
    height×width (resize them first).
    """
    s, t = vae.spatial_compression, vae.temporal_compression
    canvases = [reference_canvas(reference_array(image, i), height, width)     # bad input fails before encoding
                for i, image in enumerate(reference_images or ())]
    for name, frames in (("video", video), ("mask", mask)):
        if frames is not None:
            shape = np.shape(frames)
            if shape[0] != num_frames or tuple(shape[1:3]) != (height, width):
                raise ValueError(f"VACE {name} is {shape[0]} frames of {shape[2]}×{shape[1]}; expected "
                                 f"{num_frames} frames of {width}×{height} (resize / trim it first)")
    if video is None:
        clip = np.zeros((1, 3, num_frames, height, width), np.float32)
    else:
        clip = np.asarray(video, np.float32)[..., :3].transpose(3, 0, 1, 2)[None] * 2.0 - 1.0
    if mask is None:
        m = np.ones((num_frames, height, width), np.float32)
    else:
        m = np.asarray(mask, np.float32)
        m = np.clip(m[..., 0] if m.ndim == 4 else m, 0.0, 1.0)
    keep = (m > 0.5).astype(np.float32)[None, None]
    latents = np.concatenate([_encode(vae, clip * (1 - keep)), _encode(vae, clip * keep)], axis=1)
    latent_frames = (num_frames - 1) // t + 1
    masks = pack_mask(m, latent_frames, s)[None]
    for canvas in canvases:      # each one goes in front, so the last reference ends up first
        ref = _encode(vae, canvas[None, :, None])
        latents = np.concatenate([np.concatenate([ref, np.zeros_like(ref)], axis=1), latents], axis=2)
        masks = np.concatenate([np.zeros_like(masks[:, :, :1]), masks], axis=2)
    return np.concatenate([latents, masks], axis=1).astype(np.float32), len(canvases)
