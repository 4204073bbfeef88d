"""The control input of Wan VACE models, as diffusers' `WanVACEPipeline` builds it (wan_models.md §5.4).

    control, n_refs = vace_control(vae, height, width, num_frames, video=frames, mask=mask_frames,
                                   reference_images=[image])

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


def reference_canvas(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A reference image [h, w, 3] in 0..1, scaled to fit inside height×width and centred on a
    white canvas, as [3, height, width] in [-1, 1]."""
    image = np.asarray(image, np.float32)[..., :3]
    h, w = image.shape[:2]
    if h % 8 or w % 8:   # the reference's image processor first floors the size to multiples of 8 (lanczos)
        from PIL import Image
        from ..models.images import to_pil
        image = np.asarray(to_pil(image).resize((w - w % 8, h - h % 8), Image.LANCZOS), np.float32) / 255.0
    img = image.transpose(2, 0, 1) * 2.0 - 1.0
    h, w = img.shape[1:]
    scale = min(height / h, width / w)
    nh, nw = int(h * scale), int(w * scale)
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
    white = generate (None: generate everything); `reference_images`: images [h, w, 3] in 0..1.
    Frames must already be height×width (resize them first).
    """
    s, t = vae.spatial_compression, vae.temporal_compression
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
    refs = list(reference_images or ())
    for image in refs:      # each one goes in front, so the last reference ends up first
        ref = _encode(vae, reference_canvas(image, height, width)[None, :, None])
        latents = np.concatenate([np.concatenate([ref, np.zeros_like(ref)], axis=1), latents], axis=2)
        masks = np.concatenate([np.zeros_like(masks[:, :, :1]), masks], axis=2)
    return np.concatenate([latents, masks], axis=1).astype(np.float32), len(refs)
