"""Wan transformers stored as one file with the original Wan key names.

Wan-AI's own repos, ComfyUI's repackaged `split_files/diffusion_models/*.safetensors`
(keys optionally prefixed `model.diffusion_model.`) and their fp16 / bf16 / fp8
variants all use the original names (`blocks.0.self_attn.q`, `head.modulation`, ...).
This module maps our (diffusers-named) parameters onto those keys, infers the
model config from tensor shapes (no config.json needed, every Wan2.1/2.2 variant
including FLF2V, VACE and TI2V-5B), and dequantises ComfyUI's "fp8_scaled" files
(fp8 weights with a per-tensor `scale_weight`) on load.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .safetensors_io import CheckpointError
from .torch_pickle import is_torch_file
from .checkpoint import Checkpoint

PREFIXES = ("model.diffusion_model.", "diffusion_model.")
MARKER = "head.modulation"        # present in every original-format Wan transformer
SCALE_SUFFIX = ".scale_weight"    # ComfyUI fp8_scaled: weight = fp8 value * scale
IGNORED = ("scaled_fp8", ".scale_input")

# Our parameter name (diffusers') -> original key, by ordered prefix/segment rewrites.
_TOP = [
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out.", "head.head."),
]
_IN_BLOCK = {
    "scale_shift_table": "modulation",
    "attn1": "self_attn", "attn2": "cross_attn",
    "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o",
    "add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img",
    "norm2": "norm3",                    # diffusers' norm2 is the cross-attention norm, the original norm3
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
    "proj_in": "before_proj", "proj_out": "after_proj",   # VACE blocks
}
_BLOCK = re.compile(r"^((?:vace_)?blocks\.\d+\.)(.*)$")


def original_key(name: str) -> str:
    """The original Wan key of one of our transformer parameter names."""
    m = _BLOCK.match(name)
    if m is None:
        for ours, theirs in _TOP:
            if name.startswith(ours):
                return theirs + name[len(ours):]
        return name                     # patch_embedding.*, vace_patch_embedding.*
    head, rest = m.groups()
    return head + _BLOCK_PARTS.sub(lambda g: g.group(1) + _IN_BLOCK[g.group(2)], rest)


# Every renamed dotted part of a block key, rewritten in one pass (longest names first).
_BLOCK_PARTS = re.compile(r"(^|\.)(" + "|".join(re.escape(k) for k in sorted(_IN_BLOCK, key=len, reverse=True))
                          + r")(?=\.|$)")


def strip_prefix(keys) -> str:
    """The prefix wrapping an original-format checkpoint's keys ('' if none), or None if the
    keys are not an original Wan transformer's."""
    keys = set(keys)
    for prefix in ("",) + PREFIXES:
        if prefix + MARKER in keys:
            return prefix
    return None


def is_original_format(path) -> bool:
    p = Path(path)
    if not (p.is_file() and (p.suffix == ".safetensors" or is_torch_file(p))):
        return False
    return strip_prefix(Checkpoint([p]).keys()) is not None


class OriginalCheckpoint:
    """A `Checkpoint` seen under the original names without their prefix, with fp8_scaled
    weights multiplied by their scales as they are read (still one tensor at a time)."""

    def __init__(self, ckpt: Checkpoint, prefix: str):
        self.ckpt, self.prefix = ckpt, prefix
        self._keys = {k[len(prefix):]: k for k in ckpt.keys()
                      if k.startswith(prefix) and not k.endswith(SCALE_SUFFIX) and not any(s in k for s in IGNORED)}

    def keys(self):
        return self._keys.keys()

    def __contains__(self, key):
        return key in self._keys

    def shape(self, key):
        return tuple(self.ckpt.shape(self._keys[key]))

    def get(self, key) -> np.ndarray:
        full = self._keys[key]
        arr = self.ckpt.get(full)
        scale_key = full[:-len(".weight")] + SCALE_SUFFIX if full.endswith(".weight") else None
        if scale_key is not None and scale_key in self.ckpt:
            scale = np.asarray(self.ckpt.get(scale_key), np.float32)
            if scale.size > 1:   # one scale per output channel
                scale = scale.reshape((-1,) + (1,) * (arr.ndim - 1))
            else:
                scale = scale.reshape(())
            arr = arr.astype(np.float32) * scale
        return arr


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys for m in [rx.match(k)] if m}
    return max(found) + 1 if found else 0


def infer_transformer_config(ckpt: OriginalCheckpoint) -> dict:
    """diffusers-style config of an original-format transformer, from its tensor shapes."""
    keys = set(ckpt.keys())
    dim, in_ch = ckpt.shape("patch_embedding.weight")[:2]
    patch = tuple(ckpt.shape("patch_embedding.weight")[2:])
    head_dim = 128   # every Wan model; the q/k norms span all heads so the files do not record it
    cfg = {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(patch),
        "num_attention_heads": dim // head_dim,
        "attention_head_dim": head_dim,
        "in_channels": in_ch,
        "out_channels": ckpt.shape("head.head.weight")[0] // int(np.prod(patch)),
        "text_dim": ckpt.shape("text_embedding.0.weight")[1],
        "freq_dim": ckpt.shape("time_embedding.0.weight")[1],
        "ffn_dim": ckpt.shape("blocks.0.ffn.0.weight")[0],
        "num_layers": _count(keys, r"^blocks\.(\d+)\."),
        "cross_attn_norm": "blocks.0.norm3.weight" in keys,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }
    if "img_emb.proj.0.weight" in keys:        # Wan2.1 I2V / FLF2V: CLIP image tokens
        cfg["image_dim"] = ckpt.shape("img_emb.proj.0.weight")[0]
        cfg["added_kv_proj_dim"] = dim
        if "img_emb.emb_pos" in keys:
            cfg["pos_embed_seq_len"] = ckpt.shape("img_emb.emb_pos")[1]
    n_vace = _count(keys, r"^vace_blocks\.(\d+)\.")
    if n_vace:
        cfg["_class_name"] = "WanVACETransformer3DModel"
        step = cfg["num_layers"] // n_vace      # the released VACE models put hints on evenly spaced layers
        cfg["vace_layers"] = list(range(0, step * n_vace, step))
        cfg["vace_in_channels"] = ckpt.shape("vace_patch_embedding.weight")[1]
    return cfg


# ---- Wan VAEs (`Wan2.1_VAE` / `Wan2.2_VAE`, ComfyUI `wan_2.1_vae` / `wan2.2_vae.safetensors`) ---------

VAE_MARKER = "decoder.middle.0.residual.0.gamma"
_RESNET = {"norm1.": "residual.0.", "conv1.": "residual.2.", "norm2.": "residual.3.", "conv2.": "residual.6.",
           "conv_shortcut.": "shortcut."}
_VAE_TOP = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
_VAE_SIDE = {"conv_in.": "conv1.", "norm_out.": "head.0.", "conv_out.": "head.2.",
             "mid_block.resnets.0.": "middle.0.", "mid_block.attentions.0.": "middle.1.",
             "mid_block.resnets.1.": "middle.2."}


def _resnet_part(rest: str) -> str:
    for ours, theirs in _RESNET.items():
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    return rest


def vae_key_map(num_res_blocks: int, residual: bool = False):
    """Our (diffusers-named) VAE parameter name -> the original key.

    Wan2.1 (`residual=False`): the original encoder and decoder keep their
    stages as flat lists; a decoder level is `num_res_blocks + 1` residual blocks
    then its upsampler. Wan2.2 (`residual=True`, vae2_2.py): one module per
    stage, `encoder.downsamples.{i}.downsamples.{j}` (the resample after the
    `num_res_blocks` residual blocks) and `decoder.upsamples.{i}.upsamples.{j}`
    (the resample after `num_res_blocks + 1`); the stage shortcuts have no weights.
    """
    per_level = num_res_blocks + 2

    def key(name: str) -> str:
        for ours, theirs in _VAE_TOP.items():
            if name.startswith(ours):
                return theirs + name[len(ours):]
        side, rest = name.split(".", 1)
        for ours, theirs in _VAE_SIDE.items():
            if rest.startswith(ours):
                tail = rest[len(ours):]
                return f"{side}.{theirs}{_resnet_part(tail) if 'resnets' in ours else tail}"
        if residual:
            m = re.match(r"(down|up)_blocks\.(\d+)\.(?:resnets\.(\d+)|(downsampler|upsampler))\.(.*)$", rest)
            if m:
                kind, level, j, sampler, tail = m.groups()
                stage = "downsamples" if kind == "down" else "upsamples"
                if sampler:
                    j = num_res_blocks if kind == "down" else num_res_blocks + 1
                    return f"{side}.{stage}.{level}.{stage}.{j}.{tail}"
                return f"{side}.{stage}.{level}.{stage}.{j}.{_resnet_part(tail)}"
            return name
        m = re.match(r"down_blocks\.(\d+)\.(.*)$", rest)
        if m:
            return f"{side}.downsamples.{m.group(1)}.{_resnet_part(m.group(2))}"
        m = re.match(r"up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)$", rest)
        if m:
            level, kind, j, tail = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            flat = level * per_level + (j if kind == "resnets" else num_res_blocks + 1)
            return f"{side}.upsamples.{flat}.{_resnet_part(tail) if kind == 'resnets' else tail}"
        return name
    return key


def vae_prefix(keys) -> str | None:
    keys = set(keys)
    for prefix in ("", "vae.", "first_stage_model."):
        if prefix + VAE_MARKER in keys:
            return prefix
    return None


RESIDUAL_VAE_MARKER = "encoder.downsamples.0.downsamples.0.residual.0.gamma"


def infer_vae_config(ckpt: OriginalCheckpoint) -> dict:
    """The VAE config of an original-format file (Wan2.1, or Wan2.2 when its stages are nested), sizes
    read from its tensors."""
    from .presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    keys = set(ckpt.keys())
    if RESIDUAL_VAE_MARKER in keys:
        return _infer_residual_vae_config(ckpt, keys, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD)
    base = ckpt.shape("encoder.conv1.weight")[0]
    z_dim = ckpt.shape("conv2.weight")[0]
    # Encoder levels: residual blocks then (except the last level) one resample.
    n_down = _count(keys, r"^encoder\.downsamples\.(\d+)\.")
    resamples = sorted(i for i in range(n_down) if f"encoder.downsamples.{i}.resample.1.weight" in keys)
    levels = len(resamples) + 1
    num_res_blocks = resamples[0] if resamples else n_down
    dims, temporal = [], []
    for lvl in range(levels):
        first = lvl * (num_res_blocks + 1)
        dims.append(ckpt.shape(f"encoder.downsamples.{first}.residual.2.weight")[0] // base)
        if lvl < levels - 1:
            temporal.append(f"encoder.downsamples.{first + num_res_blocks}.time_conv.weight" in keys)
    return {"_class_name": "AutoencoderKLWan", "base_dim": base, "z_dim": z_dim, "dim_mult": dims,
            "num_res_blocks": num_res_blocks, "attn_scales": [], "temperal_downsample": temporal,
            "dropout": 0.0, "latents_mean": list(WAN21_LATENTS_MEAN) if z_dim == 16 else [0.0] * z_dim,
            "latents_std": list(WAN21_LATENTS_STD) if z_dim == 16 else [1.0] * z_dim, "is_residual": False, "in_channels": 3,
            "out_channels": 3, "patch_size": None, "scale_factor_temporal": 4, "scale_factor_spatial": 8}


def _infer_residual_vae_config(ckpt, keys, mean48, std48) -> dict:
    base = ckpt.shape("encoder.conv1.weight")[0]
    in_channels = ckpt.shape("encoder.conv1.weight")[1]
    z_dim = ckpt.shape("conv2.weight")[0]
    levels = _count(keys, r"^encoder\.downsamples\.(\d+)\.")
    num_res_blocks = _count(keys, r"^encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.")
    dims = [ckpt.shape(f"encoder.downsamples.{lvl}.downsamples.0.residual.2.weight")[0] // base
            for lvl in range(levels)]
    temporal = [f"encoder.downsamples.{lvl}.downsamples.{num_res_blocks}.time_conv.weight" in keys
                for lvl in range(levels - 1)]
    decoder_base = ckpt.shape("decoder.conv1.weight")[0] // dims[-1]
    out_channels = ckpt.shape("decoder.head.2.weight")[0]
    # RGB patchified 2x2 (12 channels) is the released model; other sizes keep in_channels as is.
    patch = 2 if in_channels == 12 and out_channels == 12 else None
    return {"_class_name": "AutoencoderKLWan", "base_dim": base, "decoder_base_dim": decoder_base, "z_dim": z_dim,
            "dim_mult": dims, "num_res_blocks": num_res_blocks, "attn_scales": [], "temperal_downsample": temporal,
            "dropout": 0.0, "latents_mean": list(mean48) if z_dim == 48 else [0.0] * z_dim,
            "latents_std": list(std48) if z_dim == 48 else [1.0] * z_dim, "is_residual": True,
            "in_channels": in_channels, "out_channels": out_channels, "patch_size": patch,
            "scale_factor_temporal": 4, "scale_factor_spatial": 16 if patch else 8}


# ---- UMT5 encoder files (ComfyUI `text_encoders/umt5_xxl_*.safetensors`: transformers' names) -------

UMT5_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"


def is_umt5_file(keys) -> bool:
    return UMT5_MARKER in set(keys)


def infer_umt5_config(ckpt: OriginalCheckpoint) -> dict:
    """A UMT5 encoder config read off its tensors (eps, buckets and distance as umt5-xxl)."""
    keys = set(ckpt.keys())
    vocab, d_model = ckpt.shape("shared.weight")
    buckets, heads = ckpt.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    return {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": d_model,
            "d_kv": ckpt.shape(UMT5_MARKER)[0] // heads, "num_heads": heads,
            "d_ff": ckpt.shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
            "num_layers": _count(keys, r"^encoder\.block\.(\d+)\."), "relative_attention_num_buckets": buckets,
            "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "vocab_size": vocab,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
            "pad_token_id": 0, "eos_token_id": 1}


# ---- Wan-AI's own UMT5 file (`models_t5_umt5-xxl-enc-bf16.pth`: the module names of Wan's t5.py) ----------

WAN_T5_MARKER = "blocks.0.attn.q.weight"
_WAN_T5_BLOCK = [   # transformers' name after `encoder.block.{i}.` -> Wan's after `blocks.{i}.`
    ("layer.0.layer_norm.", "norm1."),
    ("layer.0.SelfAttention.relative_attention_bias.", "pos_embedding.embedding."),
    ("layer.0.SelfAttention.", "attn."),
    ("layer.1.layer_norm.", "norm2."),
    ("layer.1.DenseReluDense.wi_0.", "ffn.gate.0."),   # the GELU-gated branch
    ("layer.1.DenseReluDense.wi_1.", "ffn.fc1."),
    ("layer.1.DenseReluDense.wo.", "ffn.fc2."),
]


def is_wan_t5_file(keys) -> bool:
    keys = set(keys)
    return WAN_T5_MARKER in keys and "token_embedding.weight" in keys


def wan_t5_key(name: str) -> str:
    """Our (transformers') UMT5 parameter name -> its key in Wan's T5 encoder checkpoint."""
    if name == "shared.weight":
        return "token_embedding.weight"
    if name == "encoder.final_layer_norm.weight":
        return "norm.weight"
    m = re.match(r"encoder\.block\.(\d+)\.(.*)$", name)
    if m:
        for ours, theirs in _WAN_T5_BLOCK:
            if m.group(2).startswith(ours):
                return f"blocks.{m.group(1)}.{theirs}{m.group(2)[len(ours):]}"
    return name


def infer_wan_t5_config(ckpt) -> dict:
    """The UMT5 config of a Wan T5 encoder file, from its tensor shapes."""
    keys = set(ckpt.keys())
    vocab, d_model = ckpt.shape("token_embedding.weight")
    buckets, heads = ckpt.shape("blocks.0.pos_embedding.embedding.weight")
    return {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": d_model,
            "d_kv": ckpt.shape(WAN_T5_MARKER)[0] // heads, "num_heads": heads,
            "d_ff": ckpt.shape("blocks.0.ffn.fc1.weight")[0], "num_layers": _count(keys, r"^blocks\.(\d+)\."),
            "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6, "vocab_size": vocab, "feed_forward_proj": "gated-gelu",
            "dense_act_fn": "gelu_new", "is_gated_act": True, "pad_token_id": 0, "eos_token_id": 1}


# ---- CLIP vision files: Wan-AI's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (the module names
#      of Wan's clip.py; its text tower is not used) and ComfyUI's clip_vision_h.safetensors (transformers') ----

WAN_CLIP_MARKER = "visual.transformer.0.attn.to_qkv.weight"
HF_CLIP_MARKER = "vision_model.embeddings.class_embedding"
_WAN_CLIP_LAYER = [("layer_norm1.", "norm1."), ("self_attn.out_proj.", "attn.proj."), ("layer_norm2.", "norm2."),
                   ("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.2.")]


class WanClipCheckpoint:
    """Wan's CLIP checkpoint seen under transformers' CLIPVisionModel names: the fused `to_qkv` read as
    q, k and v (its output rows in that order), the class and position embeddings without their
    leading 1-dims. Still one tensor at a time."""

    def __init__(self, ckpt):
        self.ckpt = ckpt
        self._last = (None, None)   # the last to_qkv read
        self._src = {}   # our name -> (Wan key, third of to_qkv or None)
        v = "vision_model."
        self._src[v + "embeddings.patch_embedding.weight"] = ("visual.patch_embedding.weight", None)
        self._src[v + "embeddings.class_embedding"] = ("visual.cls_embedding", None)
        self._src[v + "embeddings.position_embedding.weight"] = ("visual.pos_embedding", None)
        for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
            for p in ("weight", "bias"):
                self._src[f"{v}{ours}.{p}"] = (f"visual.{theirs}.{p}", None)
        for i in range(_count(ckpt.keys(), r"^visual\.transformer\.(\d+)\.")):
            ours, theirs = f"{v}encoder.layers.{i}.", f"visual.transformer.{i}."
            for p in ("weight", "bias"):
                for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                    self._src[f"{ours}self_attn.{proj}.{p}"] = (f"{theirs}attn.to_qkv.{p}", part)
                for a, b in _WAN_CLIP_LAYER:
                    self._src[f"{ours}{a}{p}"] = (f"{theirs}{b}{p}", None)
        missing = [k for k, _ in self._src.values() if k not in ckpt]
        if missing:
            where = getattr(getattr(ckpt, "files", [None])[0], "path", "checkpoint")
            raise CheckpointError(f"{where}: not a complete Wan CLIP checkpoint, missing {missing[:3]}")

    def keys(self):
        return self._src.keys()

    def __contains__(self, key):
        return key in self._src

    def shape(self, key):
        src, part = self._src[key]
        shape = tuple(self.ckpt.shape(src))
        if part is not None:
            return (shape[0] // 3,) + shape[1:]
        if src == "visual.cls_embedding":    # [1, 1, D]
            return shape[-1:]
        return shape[1:] if src == "visual.pos_embedding" else shape   # [1, L, D]

    def get(self, key) -> np.ndarray:
        src, part = self._src[key]
        if part is None:
            arr = self.ckpt.get(src)
        else:   # q, k, v are read one after another: to_qkv is read once for the three
            if self._last[0] != src:
                self._last = (src, self.ckpt.get(src))
            arr = self._last[1]
            n = arr.shape[0] // 3
            return np.ascontiguousarray(arr[part * n:(part + 1) * n])
        return arr.reshape(self.shape(key))


def clip_vision_checkpoint(raw):
    """A CLIP vision file under transformers' names, or None if it is neither layout."""
    keys = set(raw.keys())
    if WAN_CLIP_MARKER in keys:
        return WanClipCheckpoint(raw)
    return raw if HF_CLIP_MARKER in keys else None


def infer_clip_vision_config(ckpt) -> dict:
    """A CLIPVisionModel config from transformers-named tensors. The head count is not in any shape:
    16 for a 1,280-wide tower (ViT-H/14, the one Wan uses), else 64-wide heads (ViT-B and ViT-L)."""
    hidden, _, patch, _ = ckpt.shape("vision_model.embeddings.patch_embedding.weight")
    positions = ckpt.shape("vision_model.embeddings.position_embedding.weight")[0]
    side = int(round((positions - 1) ** 0.5))
    if side * side != positions - 1:
        raise CheckpointError(f"CLIP position embedding of {positions} rows is not 1 + a square grid")
    keys = set(ckpt.keys())
    return {"hidden_size": hidden, "patch_size": patch, "image_size": side * patch,
            "num_hidden_layers": _count(keys, r"^vision_model\.encoder\.layers\.(\d+)\."),
            "intermediate_size": ckpt.shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
            "num_attention_heads": 16 if hidden == 1280 else hidden // 64, "num_channels": 3,
            "hidden_act": "gelu", "layer_norm_eps": 1e-5}

