"""Public loaders: a source in (pipeline folder, hub repo id, `tiny`, or one checkpoint file), a model out.

    from nodes.wan import load_transformer
    model = load_transformer("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dtype="float32")

Every loader resolves its source once (`source.as_source`), then `open_component` decides the
component's format, key names and config in one place; `build` copies the tensors into the model
class (`from_config`, `WEIGHTS_NAME`, `KEEP_FP32`, `IGNORE_UNEXPECTED`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..backend import memory
from ..backend.runtime import check_compute_dtype
from . import original_format as original
from .checkpoint import check_fit, load_into, open_checkpoint
from .safetensors_io import CheckpointError
from .source import Source, as_source, config_from, read_config

DIFFUSERS, ORIGINAL, WAN_T5, TRANSFORMERS, WAN_CLIP = "diffusers", "original", "wan_t5", "transformers", "wan_clip"


@dataclass
class Component:
    """One model's weights, resolved: where, in which layout, under which names, with which config."""
    source: Source
    path: Path                     # the component folder, or the file
    format: str                    # DIFFUSERS | ORIGINAL | WAN_T5 | TRANSFORMERS | WAN_CLIP
    checkpoint: object             # lazy tensors: a Checkpoint, or a view renaming / dequantising one
    config: dict
    key_map: Callable | None = None


def _weights_name(role: str) -> str:
    return "model" if role in ("text_encoder", "image_encoder") else "diffusion_pytorch_model"


def _not_a(path, what: str, markers: str, raw) -> CheckpointError:
    return CheckpointError(f"{path} is not {what} ({markers}) and has no config.json beside it; "
                           f"first keys: {sorted(raw.keys())[:5]}")


def _single_file(role: str, path: Path, raw, config: dict | None) -> tuple:
    """(format, checkpoint view, config, key_map) of a single file, or None for diffusers names.

    The config is read off the tensor shapes, `config` (possibly partial) winning; what no tensor
    records comes from the released model of that size, or from `config`, or a CheckpointError
    names it (original_format.infer_*)."""
    if role == "transformer":
        prefix = original.strip_prefix(raw.keys())
        if prefix is None:
            return None
        ckpt = original.OriginalCheckpoint(raw, prefix)
        return ORIGINAL, ckpt, original.infer_transformer_config(ckpt, config, path), original.original_key
    if role == "vae":
        prefix = original.vae_prefix(raw.keys())
        if prefix is None:
            return None
        ckpt = original.OriginalCheckpoint(raw, prefix)
        config = original.infer_vae_config(ckpt, config, path)
        return ORIGINAL, ckpt, config, original.vae_key_map(int(config["num_res_blocks"]),
                                                             bool(config.get("is_residual")))
    # A file of a transformers folder (transformers' names): the config.json beside it is its own.
    beside = path.parent / "config.json"
    if role == "text_encoder":
        ckpt = original.OriginalCheckpoint(raw, "")
        if original.is_wan_t5_file(raw.keys()):
            return WAN_T5, ckpt, original.infer_wan_t5_config(ckpt, config, path), original.wan_t5_key
        if original.is_umt5_file(raw.keys()):
            own = config if config is not None or not beside.exists() else read_config(path.parent)
            return TRANSFORMERS, ckpt, original.infer_umt5_config(ckpt, own, path), None
        return None
    if role == "image_encoder":
        ckpt = original.clip_vision_checkpoint(raw)
        if ckpt is None:
            return None
        fmt = TRANSFORMERS if ckpt is raw else WAN_CLIP
        own = config if config is not None or fmt != TRANSFORMERS or not beside.exists() else read_config(path.parent)
        return fmt, ckpt, original.infer_clip_vision_config(ckpt, own, path), None
    raise ValueError(f"unknown component role {role!r}")


_MARKERS = {
    "transformer": ("a Wan transformer in the original / ComfyUI layout",
                    "no 'head.modulation' key, with or without a 'model.diffusion_model.' prefix"),
    "vae": ("a Wan VAE in the original / ComfyUI layout", f"no '{original.VAE_MARKER}' key"),
    "text_encoder": ("a UMT5 encoder", "neither transformers' 'encoder.block.0.layer.0.SelfAttention.q.weight' "
                                       "nor Wan's 'blocks.0.attn.q.weight' key"),
    "image_encoder": ("a CLIP vision tower", f"neither Wan's '{original.WAN_CLIP_MARKER}' nor transformers' "
                                             f"'{original.HF_CLIP_MARKER}' key"),
}


def open_component(source, role: str, subfolder: str | None = None, config=None) -> Component:
    """The `role` component ("transformer", "vae", "text_encoder", "image_encoder") of `source`.

    A pipeline folder gives `subfolder` with its config.json and diffusers names. A single file
    is read under whichever layout its keys show (original Wan / ComfyUI, Wan's T5 and CLIP,
    transformers'), its config read off the tensor shapes; `config` (a dict, possibly partial, a
    config.json, a pipeline or component folder, or a hub repo id, as diffusers'
    `from_single_file(config=...)`) overrides them. A setting no tensor records is the released
    model's for a released size; for any other size a CheckpointError asks for `config`."""
    src = as_source(source)
    path = src.component(subfolder)
    config = None if config is None or (isinstance(config, str) and not config.strip()) \
        else config_from(config, subfolder or role)
    if path.is_file():
        raw = open_checkpoint(path, _weights_name(role))
        found = _single_file(role, path, raw, config)
        if found is not None:
            fmt, ckpt, cfg, key_map = found
            return Component(src, path, fmt, ckpt, cfg, key_map)
        if config is None and not (path.parent / "config.json").exists():
            what, markers = _MARKERS[role]
            raise _not_a(path, what, markers, raw)
        return Component(src, path, DIFFUSERS, raw, config or read_config(path.parent))
    return Component(src, path, DIFFUSERS, open_checkpoint(path, _weights_name(role)), config or read_config(path))


def component_nbytes(component: Component, dtype="float32") -> int:
    """Bytes the component's weights take once widened to `dtype` (read off the tensor shapes)."""
    ckpt = component.checkpoint
    import mindspore as ms
    item = 2 if check_compute_dtype(dtype) in (ms.float16, ms.bfloat16) else 4
    return sum(int(np.prod(ckpt.shape(k), dtype=np.int64)) for k in ckpt.keys()) * item


# `offload="auto"` streams a model whose weights take more than this share of the room left under
# the memory budget: the rest is for activations (a 1.3B forward at 480p x 81 frames: ~3 GB).
AUTO_FRACTION = 0.8


def auto_offload(nbytes: int, second: int = 0) -> str:
    """"blocks" when a model of `nbytes` does not fit the room left under the memory budget;
    "model" (widened on first use, released when the other needs the room) when it does but not
    together with a second model (Wan2.2's other expert) of `second` bytes; else "none"."""
    room = AUTO_FRACTION * memory.room()
    if max(nbytes, second) > room:
        return "blocks"
    return "model" if nbytes + second > room else "none"


def _key_map(cls, component: Component):
    if component.key_map is None and hasattr(cls, "key_map_for"):
        return cls.key_map_for(component.checkpoint.keys())
    return component.key_map


def check(cls, component: Component, dtype="float32"):
    """An instance of `cls` for `component.config` with unallocated parameters, after checking that
    the checkpoint fits it (names and shapes; no data is read)."""
    model = cls.from_config(component.config, dtype=check_compute_dtype(dtype))
    check_fit(model, component.checkpoint, _key_map(cls, component), getattr(cls, "IGNORE_UNEXPECTED", ()),
              str(component.path))
    return model


def build(cls, component: Component, dtype="float32", offload="none"):
    """An instance of `cls` for `component.config`, its weights copied from the component.

    `offload` (transformers and the UMT5 encoder): "none" loads every weight; "blocks" loads the
    embeddings and head (UMT5: its final norm; the token embedding is read by rows) and streams
    the blocks from the file as they run (`checkpoints.streaming`); "model" streams
    them once and keeps them until another model needs the room; "auto" picks "blocks" when
    the model does not fit the memory budget (`backend.memory`), else "none"."""
    from .streaming import attach_block_stream, check_offload
    from ..models.residency import reserve
    dtype = check_compute_dtype(dtype)
    offload = check_offload(offload)
    model = cls.from_config(component.config, dtype=dtype)
    if not hasattr(model, "stream_blocks"):
        offload = "none"
    elif offload == "auto":
        offload = auto_offload(component_nbytes(component, dtype))
        offload = "none" if offload == "model" else offload
    kw = dict(dtype=dtype, keep_fp32=getattr(cls, "KEEP_FP32", ()), ignore_unexpected=getattr(cls, "IGNORE_UNEXPECTED", ()),
              key_map=_key_map(cls, component), source=str(component.path))
    if offload in ("blocks", "model"):
        attach_block_stream(model, component.checkpoint, keep=offload == "model", **kw)
    else:
        reserve(component_nbytes(component, dtype))     # encoders or an expert released first if needed
        load_into(model, component.checkpoint, **kw)
    model.set_train(False)
    model.offload = offload
    return model


def open_transformer(source, subfolder: str | None = "transformer", config=None):
    """(model class, Component) of a transformer (see `load_transformer`), nothing loaded yet."""
    from ..models.transformer import WanTransformer3DModel
    comp = open_component(source, "transformer", subfolder, config)
    cls = WanTransformer3DModel
    if "vace_layers" in comp.config:
        from ..models.vace import WanVACETransformer3DModel as cls
    return cls, comp


def load_transformer(source, subfolder: str | None = "transformer", dtype="float32", config=None, offload="none"):
    """A `WanTransformer3DModel` (T2V, I2V, FLF2V, TI2V), or a `WanVACETransformer3DModel` when the
    config has `vace_layers`, from its diffusers folder, or from one file with the original Wan /
    ComfyUI key names (config read off the tensors, `config` overriding it; a file of other than a
    released size, hidden size 1536, 3072 or 5120, needs `config` for its head count).

    `offload`: "none" (every weight resident), "blocks" (embeddings and head resident, the blocks
    read from the memory-mapped file and widened one block ahead as they run), "model" (the
    blocks widened on first use and kept until another model needs the room), or "auto"
    ("blocks" when the model does not fit the memory budget, `backend.memory.memory_budget()`)."""
    cls, comp = open_transformer(source, subfolder, config)
    return build(cls, comp, dtype, offload)


def load_vae(source, subfolder: str | None = "vae", dtype="float32", config=None):
    """An `AutoencoderKLWan` (Wan2.1 or Wan2.2 VAE, chosen by its config) from its diffusers folder,
    or from one file with the original Wan / ComfyUI key names (Wan2.1_VAE, Wan2.2_VAE / wan2.2_vae)."""
    from ..models.vae import AutoencoderKLWan
    return build(AutoencoderKLWan, open_component(source, "vae", subfolder, config), dtype)


def load_text_encoder(source, subfolder: str | None = "text_encoder", dtype="float32", config=None, offload="none"):
    """The UMT5 encoder, from its folder or from one file: transformers' key names (ComfyUI's umt5_xxl
    files, fp16 / fp8 / fp8_scaled) or Wan's own (`models_t5_umt5-xxl-enc-bf16.pth`). `offload` as
    `build`'s: "blocks" streams its blocks and reads the token embedding by rows (about 2 GB for
    UMT5-XXL in float32 instead of 22.8)."""
    from ..models.umt5 import UMT5EncoderModel
    return build(UMT5EncoderModel, open_component(source, "text_encoder", subfolder, config), dtype, offload)


def load_image_encoder(source, subfolder: str | None = "image_encoder", dtype="float32", config=None):
    """The CLIP vision tower used by Wan2.1 I2V / FLF2V, from its folder or from one file: Wan-AI's
    `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (Wan's names) or ComfyUI's
    `clip_vision_h.safetensors` (transformers')."""
    from ..models.clip_vision import CLIPVisionModel
    return build(CLIPVisionModel, open_component(source, "image_encoder", subfolder, config), dtype)


def load_tokenizer(source, subfolder: str | None = "tokenizer"):
    """The UMT5 tokenizer from `tokenizer.json` or `spiece.model`."""
    from ..models.tokenizer import WanTokenizer
    return WanTokenizer.from_pretrained(as_source(source).component(subfolder))


def load_image_processor(source, subfolder: str | None = "image_processor"):
    """CLIP preprocessing (resize, center crop, normalise) from `preprocessor_config.json`."""
    from ..models.clip_vision import CLIPImageProcessor
    return CLIPImageProcessor.from_pretrained(as_source(source).component(subfolder))
