"""Wan2.1 / Wan2.2 on MindSpore, usable without the graph engine.

    backend/      device runtime choices and CPU kernels (oneDNN convolutions and FFN)
    models/       the networks: transformer (+ VACE), VAE, UMT5, CLIP vision, tokenizer, LoRA view
    checkpoints/  sources (preset, folder, file, hub id), formats (safetensors, torch pickle),
                  key maps (original / ComfyUI / diffusers), presets, LoRA files, loaders
    pipelines/    schedulers, the denoise loop, text / image / VACE conditioning, whole pipelines

Imports run one way: pipelines -> checkpoints -> models -> backend (tests/test_layout.py).
"""
from .backend.runtime import to_ms_dtype
from .checkpoints.loaders import (load_image_encoder, load_image_processor, load_text_encoder, load_tokenizer,
                                  load_transformer, load_vae)
from .checkpoints.lora_files import read_lora
from .checkpoints.source import Source, as_source
from .models.lora import with_lora
from .pipelines.components import load_clip_vision, load_denoiser, load_text
from .pipelines.pipeline import WanPipeline, load_pipeline

__all__ = ["load_transformer", "load_vae", "load_text_encoder", "load_tokenizer", "load_image_encoder",
           "load_image_processor", "load_denoiser", "load_text", "load_clip_vision", "load_pipeline",
           "WanPipeline", "read_lora", "with_lora", "Source", "as_source", "to_ms_dtype"]
