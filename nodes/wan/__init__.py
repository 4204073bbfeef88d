"""Wan2.1 / Wan2.2 model code on MindSpore, usable without the graph engine."""
from .loading import (load_image_encoder, load_image_processor, load_text_encoder, load_tokenizer,
                      load_transformer, load_vae)
from .runtime import to_ms_dtype

__all__ = ["load_transformer", "load_vae", "load_text_encoder", "load_tokenizer", "load_image_encoder",
           "load_image_processor", "to_ms_dtype"]
