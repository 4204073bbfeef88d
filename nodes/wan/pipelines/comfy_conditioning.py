"""ComfyUI's Wan conditioning nodes (comfy_extras/nodes_wan.py), computed the way ComfyUI computes them.

These differ from diffusers' pipelines (image_to_video.py, vace_conditioning.py) in ways that
change the numbers, so they are kept apart:

- images are resized with torch's bilinear interpolation after a centre crop to the target aspect
  (comfy.utils.common_upscale), in float, not with PIL Lanczos through 8 bits;
- the I2V / FLF2V conditioning video is 0.5 grey (0 after the VAE's ×2−1) where nothing is given,
  with as many given frames as the start / end images have;
- VACE keeps soft masks: inactive = (v − 0.5)(1 − m) + 0.5, reactive = (v − 0.5)m + 0.5; its
  reference image is resized (bilinear, centre crop) to the frame, not fitted on white; the empty
  half of its latent is the VAE mean ("process_out(0)").

VAE encoding follows comfy/sd.py `VAE.encode`: frames cropped to a multiple of the VAE's spatial
factor (centred), ×2−1, the posterior mean, a raw VAE latent.

ComfyUI stores the raw latents in the conditioning and lets the model build its inputs when it
samples (comfy/model_base.py). Here that model-side step is done at once, so the conditioning
carries what `sampling.py` feeds the transformer, as our own Wan nodes' conditioning does:

- CONCAT_LATENTS [B, 4 + C, T, h, w] = `WAN21.concat_cond` for an image-to-video model: the mask
  inverted (1 = given frame), averaged to one channel unless it has 4, repeated to 4 channels, then
  the image latent normalised (`process_in`), both matched to the batch (`resize_to_batch_size`).
  Every Wan I2V / FLF2V model (Wan2.1, the Wan2.2 A14B I2V experts) takes exactly these channels;
  ComfyUI would silently ignore them on a text-to-video model, where our samplers report the
  channel mismatch instead;
- VACE_CONTROL [1, 96, T, h, w] / VACE_STRENGTH = `WAN21_Vace.extra_conds`: the 32 frame channels
  normalised 16 at a time, then the 64 mask channels. ComfyUI can stack several WanVaceToVideo
  contexts; our VACE transformer takes one, so a second one is refused;
- `image_embeds`: the CLIP vision penultimate states (`clip_fea`); FLF2V's two images as two rows
  [2, 257, D], the layout our transformer joins with its position embedding (ComfyUI joins them
  along the tokens, [1, 514, D]: the same tokens).

A LATENT is raw too (`"normalized": False`); Wan22ImageToVideoLatent's start frame travels as the
LATENT's `noise_mask` (ComfyUI's way), which the samplers turn into per-frame timesteps.
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms

from ..checkpoints.presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
from ..models.comfy_resize import common_upscale, nearest_exact
from .conditioning import CONCAT_LATENTS, WanConditioning
from .vace_conditioning import VACE_CONTROL, VACE_STRENGTH

NOISE_MASK = "noise_mask"      # a LATENT key: 1 = denoise, 0 = keep (Wan22ImageToVideoLatent)
LATENT_STATS = {16: (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD), 48: (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD)}


def _stats(channels: int):
    if channels not in LATENT_STATS:
        raise ValueError(f"no Wan latent format has {channels} channels (Wan2.1: 16, Wan2.2: 48)")
    mean, std = LATENT_STATS[channels]
    shape = (1, channels, 1, 1, 1)
    return np.asarray(mean, np.float32).reshape(shape), np.asarray(std, np.float32).reshape(shape)


def process_in(latent: np.ndarray) -> np.ndarray:
    """comfy.latent_formats.Wan21/Wan22.process_in: raw VAE latent -> the model's space."""
    mean, std = _stats(latent.shape[1])
    return ((latent - mean) * np.float32(1.0) / std).astype(np.float32)


def process_out(latent: np.ndarray) -> np.ndarray:
    """The model's space -> raw VAE latent (process_out(0) is the VAE mean)."""
    mean, std = _stats(latent.shape[1])
    return (latent * std / np.float32(1.0) + mean).astype(np.float32)


def _np(x) -> np.ndarray:
    return np.asarray(x.asnumpy() if hasattr(x, "asnumpy") else x, np.float32)


def crop_to_multiple(frames: np.ndarray, multiple: int) -> np.ndarray:
    """comfy/sd.py vae_encode_crop_pixels: H and W cut down to a multiple, the cut split evenly."""
    for axis in (1, 2):
        n = frames.shape[axis]
        keep = n // multiple * multiple
        if keep != n:
            start = (n % multiple) // 2
            frames = np.take(frames, np.arange(start, start + keep), axis=axis)
    return frames


def vae_encode(vae, frames) -> np.ndarray:
    """ComfyUI's VAE.encode of IMAGE frames [N, H, W, 3] in 0..1: one video, raw latent [1, z, T, h, w]."""
    frames = crop_to_multiple(_np(frames)[..., :3], vae.spatial_compression)
    video = frames.transpose(3, 0, 1, 2)[None] * np.float32(2.0) - np.float32(1.0)
    posterior = vae.encode(ms.Tensor(video).astype(vae.dtype))
    return posterior.mean.astype(ms.float32).asnumpy()


def upscale_frames(images, width: int, height: int) -> np.ndarray:
    """IMAGE frames through common_upscale(bilinear, center), as every Wan node resizes its images."""
    x = _np(images)
    return common_upscale(x.transpose(0, 3, 1, 2), width, height, "bilinear", "center").transpose(0, 2, 3, 1)


def latent_frames(length: int) -> int:
    return (length - 1) // 4 + 1


def resize_to_batch_size(x: np.ndarray, batch: int) -> np.ndarray:
    """comfy.utils.resize_to_batch_size: rows picked evenly (repeated when growing)."""
    n = x.shape[0]
    if n == batch:
        return x
    if batch <= 1:
        return x[:batch]
    if batch < n:
        scale = (n - 1) / (batch - 1)
        idx = [min(round(i * scale), n - 1) for i in range(batch)]
    else:
        scale = n / batch
        idx = [min(math.floor((i + 0.5) * scale), n - 1) for i in range(batch)]
    return x[idx]


def concat_latents(image: np.ndarray, mask: np.ndarray, batch: int) -> np.ndarray:
    """WAN21.concat_cond for an image-to-video model whose latents match `image` in size:
    [B, 4 + C, T, h, w] = [1 − mask (4 channels) | process_in(image)]."""
    image = resize_to_batch_size(process_in(image), batch)
    if mask.shape[1] != 4:
        mask = mask.mean(axis=1, keepdims=True)
    mask = np.float32(1.0) - mask
    if mask.shape[2] < image.shape[2]:
        pad = np.zeros(mask.shape[:2] + (image.shape[2] - mask.shape[2],) + mask.shape[3:], np.float32)
        mask = np.concatenate([mask, pad], axis=2)
    if mask.shape[1] == 1:
        mask = np.repeat(mask, 4, axis=1)
    return np.concatenate([resize_to_batch_size(mask, batch), image], axis=1).astype(np.float32)


def _with(cond: WanConditioning, image_embeds=None, concat=None) -> WanConditioning:
    extras = {} if concat is None else {CONCAT_LATENTS: ms.Tensor(concat)}
    return cond.with_image(image_embeds, **extras)


def image_to_video(positive, negative, vae, width, height, length, batch_size, start_image=None,
                   clip_vision_output=None):
    """WanImageToVideo: (positive, negative, empty raw latent [B, 16, T, H/8, W/8])."""
    t = latent_frames(length)
    latent = np.zeros((batch_size, 16, t, height // 8, width // 8), np.float32)
    concat = None
    if start_image is not None:
        start = upscale_frames(_np(start_image)[:length], width, height)
        video = np.full((length, height, width, start.shape[-1]), 0.5, np.float32)
        video[:start.shape[0]] = start
        image = vae_encode(vae, video)
        mask = np.ones((1, 1, t, image.shape[-2], image.shape[-1]), np.float32)
        mask[:, :, :(start.shape[0] - 1) // 4 + 1] = 0.0
        concat = concat_latents(image, mask, batch_size)
    return (_with(positive, clip_vision_output, concat), _with(negative, clip_vision_output, concat), latent)


def join_clip_tokens(start, end):
    """FLF2V's CLIP tokens of both images, as rows [2, tokens, D] (ComfyUI joins the same tokens
    along the token axis; our transformer takes one row per image)."""
    if start is None or end is None:
        return start if end is None else end
    return ms.Tensor(np.concatenate([_np(start), _np(end)], axis=0))


def first_last_frame_to_video(positive, negative, vae, width, height, length, batch_size, start_image=None,
                              end_image=None, clip_vision_start_image=None, clip_vision_end_image=None):
    """WanFirstLastFrameToVideo: the mask is built per pixel frame (the start frames plus 3, the end
    frames) and folded into 4 channels per latent frame; the CLIP tokens of both images are joined."""
    s = vae.spatial_compression
    t = latent_frames(length)
    latent = np.zeros((batch_size, vae.z_dim, t, height // s, width // s), np.float32)
    video = np.full((length, height, width, 3), 0.5, np.float32)
    mask = np.ones((1, 1, t * 4, height // s, width // s), np.float32)
    if start_image is not None:
        start = upscale_frames(_np(start_image)[:length], width, height)
        video[:start.shape[0]] = start[..., :3]
        mask[:, :, :start.shape[0] + 3] = 0.0
    if end_image is not None:
        end = upscale_frames(_np(end_image)[-length:], width, height)
        video[-end.shape[0]:] = end[..., :3]
        mask[:, :, -end.shape[0]:] = 0.0
    image = vae_encode(vae, video)
    mask = mask.reshape(1, t, 4, mask.shape[3], mask.shape[4]).transpose(0, 2, 1, 3, 4)
    concat = concat_latents(image, mask, batch_size)
    tokens = join_clip_tokens(clip_vision_start_image, clip_vision_end_image)
    return _with(positive, tokens, concat), _with(negative, tokens, concat), latent


def wan22_image_to_video_latent(vae, width, height, length, batch_size, start_image=None) -> dict:
    """Wan22ImageToVideoLatent: a 48-channel raw latent with the encoded start image in front and
    the VAE mean elsewhere, plus `noise_mask` (0 on the given frames) when there is an image."""
    t = latent_frames(length)
    latent = np.zeros((1, 48, t, height // 16, width // 16), np.float32)
    if start_image is None:
        return {"samples": latent}
    mask = np.ones((1, 1, t, latent.shape[-2], latent.shape[-1]), np.float32)
    start = upscale_frames(_np(start_image)[:length], width, height)
    encoded = vae_encode(vae, start)
    latent[:, :, :encoded.shape[2]] = encoded
    mask[:, :, :encoded.shape[2]] = 0.0
    latent = process_out(latent) * mask + latent * (np.float32(1.0) - mask)
    return {"samples": np.repeat(latent, batch_size, axis=0), NOISE_MASK: np.repeat(mask, batch_size, axis=0)}


def vace_to_video(positive, negative, vae, width, height, length, batch_size, strength, control_video=None,
                  control_masks=None, reference_image=None):
    """WanVaceToVideo: (positive, negative, empty raw latent, trim_latent)."""
    for name, cond in (("positive", positive), ("negative", negative)):
        if VACE_CONTROL in cond.extras:
            raise ValueError(f"the {name} conditioning already carries a VACE control: stacked WanVaceToVideo "
                             "nodes are not supported (this runtime's VACE transformer takes one control video)")
    t = latent_frames(length)
    if control_video is not None:
        video = upscale_frames(_np(control_video)[:length], width, height)
        if video.shape[0] < length:
            video = np.concatenate([video, np.full((length - video.shape[0],) + video.shape[1:], 0.5, np.float32)])
    else:
        video = np.full((length, height, width, 3), 0.5, np.float32)
    ref = None
    if reference_image is not None:
        ref = vae_encode(vae, upscale_frames(_np(reference_image)[:1], width, height))
        ref = np.concatenate([ref, process_out(np.zeros_like(ref))], axis=1)
    if control_masks is None:
        mask = np.ones((length, height, width, 1), np.float32)
    else:
        m = _np(control_masks)
        m = m[:, None] if m.ndim == 3 else m
        mask = common_upscale(m[:length], width, height, "bilinear", "center").transpose(0, 2, 3, 1)
        if mask.shape[0] < length:
            mask = np.concatenate([mask, np.ones((length - mask.shape[0],) + mask.shape[1:], np.float32)])
    centred = video - np.float32(0.5)
    inactive = vae_encode(vae, (centred * (np.float32(1.0) - mask) + np.float32(0.5))[..., :3])
    reactive = vae_encode(vae, (centred * mask + np.float32(0.5))[..., :3])
    frames = np.concatenate([inactive, reactive], axis=1)
    if ref is not None:
        frames = np.concatenate([ref, frames], axis=2)
    stride = 8
    hm, wm = height // stride, width // stride
    m = mask.reshape(length, hm, stride, wm, stride).transpose(2, 4, 0, 1, 3).reshape(stride * stride, length, hm, wm)
    m = nearest_exact(m, (t, hm, wm))
    trim = 0
    if ref is not None:
        m = np.concatenate([np.zeros_like(m[:, :ref.shape[2]]), m], axis=1)
        trim = ref.shape[2]
    control = np.concatenate([process_in(frames[:, :16]), process_in(frames[:, 16:]), m[None]], axis=1)
    extras = {VACE_CONTROL: ms.Tensor(control.astype(np.float32)), VACE_STRENGTH: float(strength)}
    latent = np.zeros((batch_size, 16, t + trim, height // 8, width // 8), np.float32)
    return positive.with_image(None, **extras), negative.with_image(None, **extras), latent, trim
