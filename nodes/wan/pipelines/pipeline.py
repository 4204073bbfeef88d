"""Whole Wan pipelines without the graph: load a diffusers-layout folder (or
hub repo, or the built-in `tiny` preset) and generate, as diffusers does.

    from nodes.wan import load_pipeline
    pipe = load_pipeline("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    frames = pipe.text_to_video("a fox", negative_prompt="", height=480, width=832,
                                num_frames=81, steps=50, guidance=5.0, seed=0)

    pipe = load_pipeline("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers")
    frames = pipe.text_image_to_video(PIL.Image.open("cat.png"), "a cat turns its head", height=480, width=832)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import mindspore as ms

from ..checkpoints.loaders import load_vae
from ..checkpoints.source import as_source
from ..models.denoiser import WanDenoiser
from .components import load_clip_vision, load_denoiser, load_text
from .conditioning import WanTextEncoder
from .noise import make_noise
from .sampling import denoise


def decode_latents(vae, latents: ms.Tensor, tiled: bool = False, normalized: bool = True) -> np.ndarray:
    """Un-normalise (unless the latents are raw VAE latents), decode and post-process as diffusers
    (output_type="np"): frames [B, F, H, W, 3] float32 in 0..1."""
    z = latents.astype(vae.dtype)
    z = vae.denormalize_latents(z) if normalized else z
    video = vae.decode(z, tiled=tiled) if tiled else vae.decode(z)
    video = (video.astype(ms.float32) / 2 + 0.5).clamp(0, 1)
    return video.asnumpy().transpose(0, 2, 3, 4, 1)


@dataclass
class WanPipeline:
    denoiser: WanDenoiser
    text_encoder: WanTextEncoder
    vae: object
    clip_vision: object | None = None     # WanCLIPVision: Wan2.1 I2V / FLF2V only

    @property
    def latent_channels(self) -> int:
        """Channels the scheduler steps (I2V models take more: the image conditioning is appended)."""
        return self.vae.z_dim

    def latent_shape(self, batch: int, height: int, width: int, num_frames: int) -> tuple:
        s, t = self.vae.spatial_compression, self.vae.temporal_compression
        return (batch, self.vae.z_dim, (num_frames - 1) // t + 1, height // s, width // s)

    def text_to_video(self, prompt: str | list[str], negative_prompt: str | list[str] | None = "", *,
                      height: int = 480, width: int = 832, num_frames: int = 81, steps: int = 50,
                      guidance: float = 5.0, guidance_2: float | None = None, shift: float | None = None,
                      scheduler: str = "unipc", seed: int = 0, latents=None, max_sequence_length: int = 512,
                      callback=None) -> np.ndarray:
        """Frames [B, F, H, W, 3] in 0..1. `latents` overrides the seed's noise; `max_sequence_length`
        is the prompts' token count, as diffusers' (512 in every Wan pipeline)."""
        pos, neg, batch = self._encode_prompts(prompt, negative_prompt, guidance, max_sequence_length)
        shape = self.latent_shape(batch, height, width, num_frames)
        noise = np.asarray(latents, np.float32) if latents is not None else make_noise(seed, shape)
        x, _ = denoise(self.denoiser, pos, neg, steps=steps, guidance=guidance, guidance_2=guidance_2,
                       scheduler=scheduler, shift=shift, noise=noise, callback=callback)
        return decode_latents(self.vae, x)

    def _encode_prompts(self, prompt, negative_prompt, guidance: float, max_length: int = 512):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        pos = self.text_encoder.encode(prompts, max_length)
        neg = None
        if guidance > 1.0:
            negs = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
            neg = self.text_encoder.encode(negs, max_length)
        return pos, neg, len(prompts)

    def text_image_to_video(self, image, prompt: str | list[str], negative_prompt: str | list[str] | None = "", *,
                            last_image=None, height: int = 480, width: int = 832, num_frames: int = 81,
                            steps: int = 50, guidance: float = 5.0, guidance_2: float | None = None,
                            shift: float | None = None, scheduler: str = "unipc", seed: int = 0, latents=None,
                            image_embeds=None, callback=None) -> np.ndarray:
        """Image-to-video as diffusers' WanImageToVideoPipeline (Wan2.1 I2V, FLF2V with `last_image`,
        Wan2.2 I2V A14B, TI2V-5B): frames [B, F, H, W, 3] in 0..1. `latents` overrides the seed's noise;
        `image_embeds` replaces the CLIP encoding of the image(s)."""
        from .image_to_video import condition_on_images, needs_image_embeds
        pos, neg, batch = self._encode_prompts(prompt, negative_prompt, guidance)
        if image_embeds is None and needs_image_embeds(self.denoiser):
            if self.clip_vision is None:
                raise ValueError("this model attends to CLIP image tokens but the pipeline has no image encoder")
            image_embeds = self.clip_vision.encode([image] if last_image is None else [image, last_image])
        if image_embeds is not None and batch > 1:
            image_embeds = ms.Tensor(np.tile(image_embeds.asnumpy(), (batch, 1, 1)))
        pos, neg = condition_on_images(self.vae, pos, neg, image, height=height, width=width, num_frames=num_frames,
                                       batch=batch, last_image=last_image, image_embeds=image_embeds)
        shape = self.latent_shape(batch, height, width, num_frames)
        noise = np.asarray(latents, np.float32) if latents is not None else make_noise(seed, shape)
        x, _ = denoise(self.denoiser, pos, neg, steps=steps, guidance=guidance, guidance_2=guidance_2,
                       scheduler=scheduler, shift=shift, noise=noise, callback=callback)
        return decode_latents(self.vae, x)


def load_pipeline(source: str | os.PathLike, dtype="float32", vae_dtype="float32",
                  text_encoder_dtype="float32", compile: bool | str = "auto") -> WanPipeline:
    src = as_source(source)
    clip = load_clip_vision(src, dtype) if src.has_component("image_encoder") else None
    return WanPipeline(denoiser=load_denoiser(src, dtype, compile), text_encoder=load_text(src, text_encoder_dtype),
                       vae=load_vae(src, "vae", dtype=vae_dtype), clip_vision=clip)
