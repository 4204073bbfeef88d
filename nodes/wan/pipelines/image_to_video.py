"""Image-to-video conditioning as diffusers' `WanImageToVideoPipeline` builds it,
usable without the graph.

Three families share this code:
- Wan2.1 I2V / FLF2V and Wan2.2 I2V A14B: the model input is the noisy latents
  followed by 20 channels, a 4-channel "known frame" mask and the VAE latents of
  the conditioning video [image, zeros…(, last_image)]. Wan2.1 also attends to
  CLIP tokens of the image(s); Wan2.2 A14B has no CLIP branch.
- TI2V-5B (`expand_timesteps`): no extra channels; the first latent frame is
  replaced by the encoded image and its tokens get timestep 0.

Images are PIL images or arrays [H, W, 3] / [1, H, W, 3] (uint8, or float in 0..1
as the graph's IMAGE sockets carry them).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms

from ..models.images import to_pil
from .conditioning import CONCAT_LATENTS, FIRST_FRAME_LATENTS, FIRST_FRAME_MASK, WanConditioning


def preprocess_image(image, height: int, width: int) -> np.ndarray:
    """[1, 3, H, W] float32 in [-1, 1]: LANCZOS resize to W×H, as diffusers' VideoProcessor does.

    Going through 8-bit PIL keeps LANCZOS identical to diffusers (which is given PIL images);
    a float image is quantised to 8 bits first, as saving it to a file would."""
    from PIL import Image
    pil = to_pil(image)
    if pil.size != (width, height):
        pil = pil.resize((width, height), resample=Image.LANCZOS)
    arr = np.asarray(pil).astype(np.float32) / 255.0
    return (arr * 2.0 - 1.0).transpose(2, 0, 1)[None]


def conditioning_video(first: np.ndarray, num_frames: int, last: np.ndarray | None = None) -> np.ndarray:
    """[1, 3, F, H, W]: the first image, then zeros, and for FLF2V the last image as frame F−1."""
    _, c, h, w = first.shape
    video = np.zeros((1, c, num_frames, h, w), np.float32)
    video[:, :, 0] = first
    if last is not None:
        if num_frames < 2:
            raise ValueError("a last image needs at least 2 frames")
        video[:, :, -1] = last
    return video


def known_frame_mask(batch: int, num_frames: int, height: int, width: int, has_last: bool,
                     temporal: int = 4) -> np.ndarray:
    """[B, 4, T', h, w]: 1 where the pixel frame is given (frame 0, and F−1 for FLF2V).

    The VAE packs pixel frame 0 alone into latent frame 0 and frames 4j−3…4j into frame j;
    repeating frame 0's mask `temporal` times gives every latent frame `temporal` channels,
    channel c of latent frame j standing for pixel frame 4j + c − 3."""
    per_frame = np.zeros((batch, 1, num_frames, height, width), np.float32)
    per_frame[:, :, 0] = 1.0
    if has_last:
        per_frame[:, :, -1] = 1.0
    padded = np.concatenate([np.repeat(per_frame[:, :, :1], temporal, axis=2), per_frame[:, :, 1:]], axis=2)
    t_lat = padded.shape[2] // temporal
    return padded.reshape(batch, t_lat, temporal, height, width).transpose(0, 2, 1, 3, 4)


def encode_normalized(vae, video: np.ndarray) -> ms.Tensor:
    """VAE posterior mode, normalised to the transformer's latent space, in float32."""
    posterior = vae.encode(ms.Tensor(video).astype(vae.dtype))
    return vae.normalize_latents(posterior.mode().astype(ms.float32))


def _repeat_batch(x: ms.Tensor, batch: int) -> ms.Tensor:
    return x if batch == 1 else ms.Tensor(np.repeat(x.asnumpy(), batch, axis=0))


def i2v_concat_latents(vae, image, height: int, width: int, num_frames: int, batch: int = 1,
                       last_image=None) -> ms.Tensor:
    """[B, 4 + z, T', h, w]: known-frame mask, then the normalised latents of the conditioning video."""
    first = preprocess_image(image, height, width)
    last = None if last_image is None else preprocess_image(last_image, height, width)
    latents = encode_normalized(vae, conditioning_video(first, num_frames, last))
    s, t = vae.spatial_compression, vae.temporal_compression
    mask = known_frame_mask(batch, num_frames, height // s, width // s, last is not None, t)
    return ms.Tensor(np.concatenate([mask, np.repeat(latents.asnumpy(), batch, axis=0)], axis=1))


def first_frame_conditioning(vae, image, height: int, width: int, num_frames: int, batch: int = 1):
    """TI2V-5B: (latents of the image alone [B, z, 1, h, w], mask [1, 1, T', h, w] with 0 on frame 0)."""
    latents = encode_normalized(vae, preprocess_image(image, height, width)[:, :, None])
    s, t = vae.spatial_compression, vae.temporal_compression
    mask = np.ones((1, 1, (num_frames - 1) // t + 1, height // s, width // s), np.float32)
    mask[:, :, 0] = 0.0
    return _repeat_batch(latents, batch), ms.Tensor(mask)


def uses_first_frame_conditioning(vae) -> bool:
    """Only TI2V-5B uses the Wan2.2 VAE (2×2 patchified, ×16): it conditions by frame replacement."""
    return bool(getattr(vae, "patch_size", None))


def image_conditioning(vae, image, height: int, width: int, num_frames: int, batch: int = 1,
                       last_image=None) -> dict:
    """The `extras` of a WanConditioning for this VAE's model family."""
    if uses_first_frame_conditioning(vae):
        if last_image is not None:
            raise ValueError("a last image (FLF2V) needs the Wan2.1 VAE; TI2V-5B conditions on the first frame only")
        latents, mask = first_frame_conditioning(vae, image, height, width, num_frames, batch)
        return {FIRST_FRAME_LATENTS: latents, FIRST_FRAME_MASK: mask}
    return {CONCAT_LATENTS: i2v_concat_latents(vae, image, height, width, num_frames, batch, last_image)}


def recompose_first_frame(x: ms.Tensor, cond: WanConditioning) -> ms.Tensor:
    """TI2V: (1 − mask)·image latents + mask·x, i.e. frame 0 replaced by the given image's latents."""
    mask = cond.extras.get(FIRST_FRAME_MASK)
    if mask is None:
        return x
    frame = cond.extras[FIRST_FRAME_LATENTS].astype(x.dtype)
    mask = mask.astype(x.dtype)
    return (1 - mask) * frame + mask * x


def token_timestep_mask(mask: ms.Tensor, patch_size) -> np.ndarray:
    """[tokens] from a [1, 1, T', h, w] frame mask: one value per transformer patch."""
    m = mask.asnumpy()[0, 0]
    pt, ph, pw = patch_size
    return m[::pt, ::ph, ::pw].reshape(-1)


def needs_image_embeds(denoiser) -> bool:
    return denoiser.config.get("image_dim") is not None


def condition_on_images(vae, positive: WanConditioning, negative: WanConditioning | None, image, *,
                        height: int, width: int, num_frames: int, batch: int = 1, last_image=None,
                        image_embeds: ms.Tensor | None = None):
    """(positive, negative) carrying the image conditioning; CLIP embeds go to both, as in diffusers."""
    extras = image_conditioning(vae, image, height, width, num_frames, batch, last_image)
    pos = positive.with_image(image_embeds, **extras)
    neg = None if negative is None else negative.with_image(image_embeds, **extras)
    return pos, neg
