"""Whole Wan pipelines without the graph: load a diffusers-layout folder (or
hub repo, or the built-in `tiny` preset) and generate, as diffusers does.

    from nodes.wan.pipeline import load_pipeline
    pipe = load_pipeline("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    frames = pipe.text_to_video("a fox", negative_prompt="", height=480, width=832,
                                num_frames=81, steps=50, guidance=5.0, seed=0)

    pipe = load_pipeline("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers")
    frames = pipe.text_image_to_video(PIL.Image.open("cat.png"), "a cat turns its head", height=480, width=832)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms

from .conditioning import WanTextEncoder
from .denoiser import WanDenoiser
from .loading import load_text_encoder, load_tokenizer, load_transformer, load_vae
from .noise import make_noise
from .sampling import denoise
from .weights import read_config, resolve


def _model_index(root: Path) -> dict:
    return read_config(root, "model_index.json") if (root / "model_index.json").exists() else {}


# A compile costs ~3 s per latent shape for a real block and repays itself within
# one step; toy models (the `tiny` preset, test configs) are faster left eager.
COMPILE_MIN_DIM = 1024
COMPILE_MODES = ("auto", "on", "off")


def should_compile(transformer, compile: bool | str = "auto") -> bool:
    """`compile`: True/"on", False/"off", or "auto" (every real Wan checkpoint: hidden size ≥ 1024)."""
    if isinstance(compile, bool):
        return compile
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES} or a bool, got {compile!r}")
    return compile == "on" or (compile == "auto" and transformer.dim >= COMPILE_MIN_DIM)


# Wan2.2 A14B experts hand over at this fraction of the training timesteps (the
# -Diffusers repos' model_index.json): T2V 0.875; I2V (36 input channels) 0.9.
A14B_BOUNDARY = {16: 0.875, 36: 0.9}


def load_denoiser(source: str | os.PathLike, dtype="float32", compile: bool | str = "auto",
                  low_noise_source: str | os.PathLike | None = None,
                  boundary_ratio: float | None = None) -> WanDenoiser:
    """The transformer(s) of a pipeline folder, with its scheduler and MoE settings; or a
    single-file transformer (original Wan / ComfyUI keys, config inferred), optionally with
    `low_noise_source`, the second expert file of a Wan2.2 A14B model.

    `compile` ("auto", "on"/True, "off"/False) runs the transformer blocks under
    ms.jit: one graph per latent shape shared by all blocks, compiled on first use
    and falling back to eager execution if the device cannot compile it.
    `boundary_ratio` overrides the expert switch point (default: the model's own).
    """
    root = resolve_source(source)
    if root.is_file():
        t1 = load_transformer(root, dtype=dtype)
        t2 = load_transformer(resolve_source(low_noise_source), dtype=dtype) if low_noise_source else None
        index = {}
        # The -Diffusers repos' UniPC flow_shift: 5.0 for TI2V-5B (48 channels), 16.0 for FLF2V
        # (CLIP position embeddings), 3.0 for the rest; the denoise node's `shift` overrides it.
        in_ch = int(t1.config["in_channels"])
        sched = {"flow_shift": 5.0 if in_ch == 48 else 16.0 if t1.config.get("pos_embed_seq_len") else 3.0}
        if t2 is not None:
            index["boundary_ratio"] = A14B_BOUNDARY.get(int(t1.config["in_channels"]), 0.875)
        # TI2V-5B (48 latent channels) takes per-token timesteps, as its -Diffusers model_index says
        index["expand_timesteps"] = in_ch == 48
    else:
        if low_noise_source:
            raise ValueError("low_noise_source is for single-file experts; a pipeline folder brings its own "
                             "transformer_2")
        index = _model_index(root)
        t1 = load_transformer(root, "transformer", dtype=dtype)
        t2 = load_transformer(root, "transformer_2", dtype=dtype) if (root / "transformer_2").is_dir() else None
        sched = read_config(root / "scheduler", "scheduler_config.json") if (root / "scheduler").is_dir() else {}
    for t in (t1, t2):
        if t is not None and should_compile(t, compile):
            t.compile()
    if boundary_ratio is not None:
        if t2 is None:
            raise ValueError("boundary_ratio needs two experts (a Wan2.2 A14B model)")
        index["boundary_ratio"] = float(boundary_ratio)
    return WanDenoiser(transformer=t1, transformer_2=t2, boundary_ratio=index.get("boundary_ratio"),
                       expand_timesteps=bool(index.get("expand_timesteps", False)),
                       scheduler_config=sched, num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
                       name=str(source))


# Where a single-file encoder's tokenizer comes from when none is named (all Wan models share it).
DEFAULT_TOKENIZER_SOURCE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def load_text(source: str | os.PathLike, dtype="float32",
              tokenizer_source: str | os.PathLike | None = None) -> WanTextEncoder:
    """UMT5 encoder + tokenizer of a pipeline folder / repo, or an encoder file (ComfyUI's umt5_xxl_*)
    with the tokenizer of `tokenizer_source` (a pipeline folder or repo id; by default Wan-AI's)."""
    root = resolve_source(source)
    tok = tokenizer_source or (DEFAULT_TOKENIZER_SOURCE if root.is_file() else root)
    # load_tokenizer fetches only the tokenizer/ folder of a hub repo; `tiny` is the built-in preset
    tokenizer = load_tokenizer(resolve_source(tok) if str(tok) == "tiny" else tok, "tokenizer")
    encoder = load_text_encoder(root, None if root.is_file() else "text_encoder", dtype=dtype)
    return WanTextEncoder(encoder=encoder, tokenizer=tokenizer)


def resolve_source(source: str | os.PathLike) -> Path:
    """`tiny` -> the built-in preset folder; a folder; or a hub repo id (all of it)."""
    if str(source) == "tiny":
        from .presets import tiny_pipeline_path
        return tiny_pipeline_path()
    return resolve(source, None)


def decode_latents(vae, latents: ms.Tensor, tiled: bool = False) -> np.ndarray:
    """Un-normalise, decode and post-process as diffusers (output_type="np"):
    frames [B, F, H, W, 3] float32 in 0..1."""
    z = vae.denormalize_latents(latents.astype(vae.dtype))
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
                      scheduler: str = "unipc", seed: int = 0, latents=None, callback=None) -> np.ndarray:
        """Frames [B, F, H, W, 3] in 0..1. `latents` overrides the seed's noise."""
        pos, neg, batch = self._encode_prompts(prompt, negative_prompt, guidance)
        shape = self.latent_shape(batch, height, width, num_frames)
        noise = np.asarray(latents, np.float32) if latents is not None else make_noise(seed, shape)
        x, _ = denoise(self.denoiser, pos, neg, steps=steps, guidance=guidance, guidance_2=guidance_2,
                       scheduler=scheduler, shift=shift, noise=noise, callback=callback)
        return decode_latents(self.vae, x)

    def _encode_prompts(self, prompt, negative_prompt, guidance: float):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        pos = self.text_encoder.encode(prompts)
        neg = None
        if guidance > 1.0:
            negs = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
            neg = self.text_encoder.encode(negs)
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
    root = resolve_source(source)
    clip = None
    if (root / "image_encoder").is_dir():
        from .image_to_video import load_clip_vision
        clip = load_clip_vision(root, dtype)
    return WanPipeline(denoiser=load_denoiser(root, dtype, compile), text_encoder=load_text(root, text_encoder_dtype),
                       vae=load_vae(root, "vae", dtype=vae_dtype), clip_vision=clip)
