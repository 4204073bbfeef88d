"""Public loaders: a diffusers-layout folder or hub repo id in, a model out.

    from nodes.wan import load_transformer
    model = load_transformer("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dtype="float32")

Each model class provides `from_config(config, dtype)`, the checkpoint base
name (`WEIGHTS_NAME`), and the modules it keeps in float32 (`KEEP_FP32`).
"""
from __future__ import annotations

import os

from .runtime import check_compute_dtype
from .safetensors_io import CheckpointError
from .weights import load_into, open_checkpoint, read_config, resolve


def _load(cls, path_or_repo, subfolder, dtype, config=None, ckpt=None, key_map=None):
    dtype = check_compute_dtype(dtype)
    folder = resolve(path_or_repo, subfolder)
    if config is None:
        config = read_config(folder if folder.is_dir() else folder.parent)
    model = cls.from_config(config, dtype=dtype)
    if ckpt is None:
        ckpt = open_checkpoint(folder, cls.WEIGHTS_NAME)
    if key_map is None and hasattr(cls, "key_map_for"):
        key_map = cls.key_map_for(ckpt.keys())
    load_into(model, ckpt, dtype=dtype, keep_fp32=getattr(cls, "KEEP_FP32", ()),
              ignore_unexpected=getattr(cls, "IGNORE_UNEXPECTED", ()), key_map=key_map, source=str(folder))
    model.set_train(False)
    return model


def load_transformer(path_or_repo: str | os.PathLike, subfolder: str | None = "transformer",
                     dtype="float32", config: dict | None = None):
    """A `WanTransformer3DModel` (T2V, I2V, FLF2V, TI2V), or a `WanVACETransformer3DModel` when the
    config has `vace_layers`, from its diffusers folder, or from one `.safetensors` file with the
    original Wan / ComfyUI key names (config inferred from the tensors unless given)."""
    from .single_file import OriginalCheckpoint, infer_transformer_config, original_key, strip_prefix
    from .transformer import WanTransformer3DModel
    path = resolve(path_or_repo, subfolder)
    ckpt = key_map = None
    if path.is_file():
        raw = open_checkpoint(path, WanTransformer3DModel.WEIGHTS_NAME)
        prefix = strip_prefix(raw.keys())
        if prefix is not None:
            ckpt, key_map = OriginalCheckpoint(raw, prefix), original_key
            config = config or infer_transformer_config(ckpt)
        elif config is None and not (path.parent / "config.json").exists():
            raise CheckpointError(
                f"{path} is not a Wan transformer in the original / ComfyUI layout (no 'head.modulation' key, "
                f"with or without a 'model.diffusion_model.' prefix) and has no config.json beside it; "
                f"first keys: {sorted(raw.keys())[:5]}")
    if config is None:
        config = read_config(path if path.is_dir() else path.parent)
    cls = WanTransformer3DModel
    if "vace_layers" in config:
        from .vace import WanVACETransformer3DModel as cls
    return _load(cls, path_or_repo, subfolder, dtype, config, ckpt=ckpt, key_map=key_map)


def load_vae(path_or_repo: str | os.PathLike, subfolder: str | None = "vae", dtype="float32",
             config: dict | None = None):
    """An `AutoencoderKLWan` (Wan2.1 or Wan2.2 VAE, chosen by its config) from its diffusers folder,
    or from one `.safetensors` file with the original Wan / ComfyUI key names (Wan2.1_VAE,
    Wan2.2_VAE / wan2.2_vae), its config inferred from the tensor shapes."""
    from .single_file import OriginalCheckpoint, infer_vae_config, vae_key_map, vae_prefix
    from .vae import AutoencoderKLWan
    path = resolve(path_or_repo, subfolder)
    if path.is_file():
        raw = open_checkpoint(path, AutoencoderKLWan.WEIGHTS_NAME)
        prefix = vae_prefix(raw.keys())
        if prefix is not None:
            ckpt = OriginalCheckpoint(raw, prefix)
            config = config or infer_vae_config(ckpt)
            return _load(AutoencoderKLWan, path_or_repo, subfolder, dtype, config, ckpt=ckpt,
                         key_map=vae_key_map(int(config["num_res_blocks"]), bool(config.get("is_residual"))))
        if config is None and not (path.parent / "config.json").exists():
            raise CheckpointError(
                f"{path} is not a Wan VAE in the original / ComfyUI layout (no '{'decoder.middle.0.residual.0.gamma'}' "
                f"key) and has no config.json beside it; first keys: {sorted(raw.keys())[:5]}")
    return _load(AutoencoderKLWan, path_or_repo, subfolder, dtype, config)


def load_text_encoder(path_or_repo: str | os.PathLike, subfolder: str | None = "text_encoder", dtype="float32",
                      config: dict | None = None):
    """The UMT5 encoder, from its folder or from one file: transformers' key names (ComfyUI's umt5_xxl
    files, fp16 / fp8 / fp8_scaled) or Wan's own (`models_t5_umt5-xxl-enc-bf16.pth`), config inferred
    when no config.json is beside it."""
    from .single_file import (OriginalCheckpoint, infer_umt5_config, infer_wan_t5_config, is_umt5_file,
                              is_wan_t5_file, wan_t5_key)
    from .umt5 import UMT5EncoderModel
    path = resolve(path_or_repo, subfolder)
    if path.is_file() and config is None and not (path.parent / "config.json").exists():
        raw = open_checkpoint(path, UMT5EncoderModel.WEIGHTS_NAME)
        ckpt = OriginalCheckpoint(raw, "")
        if is_wan_t5_file(raw.keys()):
            return _load(UMT5EncoderModel, path_or_repo, subfolder, dtype, infer_wan_t5_config(ckpt), ckpt=ckpt,
                         key_map=wan_t5_key)
        if not is_umt5_file(raw.keys()):
            raise CheckpointError(f"{path} is not a UMT5 encoder (neither transformers' "
                                  "'encoder.block.0.layer.0.SelfAttention.q.weight' nor Wan's 'blocks.0.attn.q.weight' "
                                  f"key) and has no config.json beside it; first keys: {sorted(raw.keys())[:5]}")
        return _load(UMT5EncoderModel, path_or_repo, subfolder, dtype, infer_umt5_config(ckpt), ckpt=ckpt)
    return _load(UMT5EncoderModel, path_or_repo, subfolder, dtype, config)


def load_image_encoder(path_or_repo: str | os.PathLike, subfolder: str | None = "image_encoder", dtype="float32",
                       config: dict | None = None):
    """The CLIP vision tower used by Wan2.1 I2V / FLF2V, from its folder or from one file: Wan-AI's
    `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (Wan's names) or ComfyUI's
    `clip_vision_h.safetensors` (transformers'), config inferred when no config.json is beside it."""
    from .clip_vision import CLIPVisionModel
    from .single_file import clip_vision_checkpoint, infer_clip_vision_config
    path = resolve(path_or_repo, subfolder)
    if path.is_file() and not (path.parent / "config.json").exists():
        raw = open_checkpoint(path, CLIPVisionModel.WEIGHTS_NAME)
        ckpt = clip_vision_checkpoint(raw)
        if ckpt is None:
            raise CheckpointError(f"{path} is not a CLIP vision tower (neither Wan's 'visual.transformer.0.attn.to_qkv."
                                  "weight' nor transformers' 'vision_model.embeddings.class_embedding' key) and has no "
                                  f"config.json beside it; first keys: {sorted(raw.keys())[:5]}")
        return _load(CLIPVisionModel, path_or_repo, subfolder, dtype, config or infer_clip_vision_config(ckpt),
                     ckpt=ckpt)
    return _load(CLIPVisionModel, path_or_repo, subfolder, dtype, config)


def load_tokenizer(path_or_repo: str | os.PathLike, subfolder: str | None = "tokenizer"):
    """The UMT5 tokenizer from `tokenizer.json` or `spiece.model`."""
    from .tokenizer import WanTokenizer
    return WanTokenizer.from_pretrained(resolve(path_or_repo, subfolder))


def load_image_processor(path_or_repo: str | os.PathLike, subfolder: str | None = "image_processor"):
    """CLIP preprocessing (resize, center crop, normalise) from `preprocessor_config.json`."""
    from .clip_vision import CLIPImageProcessor
    return CLIPImageProcessor.from_pretrained(resolve(path_or_repo, subfolder))
