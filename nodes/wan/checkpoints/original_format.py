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
        return self._scaled(full, self.ckpt.get(full))

    def get_rows(self, key, rows) -> np.ndarray:
        """`get(key)[rows]`, reading only those rows (a token embedding)."""
        full = self._keys[key]
        return self._scaled(full, self.ckpt.get_rows(full, rows), np.asarray(rows, np.int64))

    def _scaled(self, full: str, arr: np.ndarray, rows=None) -> np.ndarray:
        """`arr` (tensor `full`, or its `rows`) times its fp8 scale, if it has one."""
        scale_key = full[:-len(".weight")] + SCALE_SUFFIX if full.endswith(".weight") else None
        if scale_key is None or scale_key not in self.ckpt:
            return arr
        scale = np.asarray(self.ckpt.get(scale_key), np.float32)
        if scale.size > 1:   # one scale per output channel (per row)
            scale = scale.reshape(-1)
            if rows is not None:
                scale = scale[rows]
            scale = scale.reshape(scale.shape + (1,) * (arr.ndim - scale.ndim))
        else:
            scale = scale.reshape(())
        return arr.astype(np.float32) * scale

    def read_into(self, key, out: np.ndarray) -> bool:
        """`get(key)` into `out` without allocating, for a tensor with no fp8 scale (see `Checkpoint`)."""
        full = self._keys[key]
        if full.endswith(".weight") and full[:-len(".weight")] + SCALE_SUFFIX in self.ckpt:
            return False
        read = getattr(self.ckpt, "read_into", None)
        return bool(read) and read(full, out)

    def will_need(self, key) -> None:
        full = self._keys[key]
        if hasattr(self.ckpt, "will_need"):
            self.ckpt.will_need(full)


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys for m in [rx.match(k)] if m}
    return max(found) + 1 if found else 0


# Where a loader's `config` comes from, for the error that asks for it (by component role).
CONFIG_INPUT = {
    "transformer": "WanModelLoader's `config` input",
    "vae": "WanVAELoader's `config` input",
    "text_encoder": "WanTextEncoderLoader's `config` input",
    "image_encoder": "load_image_encoder(config=...) / load_clip_vision(config=...)",
}


def _settings(names, given: dict, released: dict | None, where, shapes: str, role: str) -> dict:
    """The settings `names`, which no tensor of the file records: from `given` (the user's config),
    else from `released` (the released model these shapes are), else a CheckpointError naming every
    missing one and the input that supplies it."""
    out, missing = {}, []
    for n in names:
        if n in given:
            out[n] = given[n]
        elif released is not None and n in released:
            out[n] = released[n]
        else:
            missing.append(n)
    if missing:
        raise CheckpointError(f"cannot tell {' and '.join(missing)} of {where} from its tensors ({shapes}): pass "
                              f"config= ({CONFIG_INPUT[role]}: a pipeline folder, config.json or hub repo id)")
    return out


# Released Wan transformers by hidden size: 1.3B (T2V, VACE) 12 heads, TI2V-5B 24, 14B / A14B 40; all
# 128-wide. A file's tensors do not record the head count (the q/k norms span all heads).
RELEASED_HEADS = {1536: 12, 3072: 24, 5120: 40}
RELEASED_VACE = {(30, 15), (40, 8)}   # (layers, VACE blocks): hints every 2nd (1.3B) / 5th (14B) layer


def infer_transformer_config(ckpt: OriginalCheckpoint, given: dict | None = None, where="the checkpoint") -> dict:
    """diffusers-style config of an original-format transformer: `given` (a config, possibly
    partial) wins, the tensor shapes decide the rest. The head count (and, for VACE, which layers
    take hints) is in no shape: it is the released model's for a released size (hidden size 1536,
    3072 or 5120), else it must be given. `eps` (1e-6) and `rope_max_seq_len` (1024, a bound on the
    latent grid that does not change the values) are those of every Wan model unless given."""
    given = dict(given or {})
    keys = set(ckpt.keys())
    dim, in_ch = ckpt.shape("patch_embedding.weight")[:2]
    patch = tuple(ckpt.shape("patch_embedding.weight")[2:])
    num_layers = _count(keys, r"^blocks\.(\d+)\.")
    n_vace = _count(keys, r"^vace_blocks\.(\d+)\.")
    if "attention_head_dim" in given and "num_attention_heads" not in given:
        hd = int(given["attention_head_dim"])
        if hd < 1 or dim % hd:
            raise CheckpointError(f"config attention_head_dim={hd} does not divide the hidden size {dim} of {where}")
        given["num_attention_heads"] = dim // hd
    released = None
    if dim in RELEASED_HEADS:
        released = {"num_attention_heads": RELEASED_HEADS[dim]}
        if (num_layers, n_vace) in RELEASED_VACE:
            step = num_layers // n_vace
            released["vace_layers"] = list(range(0, step * n_vace, step))
    shapes = f"dim {dim}" + ("" if released else ", not a released Wan size (1536, 3072, 5120)")
    if n_vace:
        shapes += f", {num_layers} layers, {n_vace} VACE blocks"
    found = _settings(["num_attention_heads"] + (["vace_layers"] if n_vace else []), given, released, where,
                      shapes, "transformer")
    heads = int(found["num_attention_heads"])
    if heads < 1 or dim % heads:
        raise CheckpointError(f"config num_attention_heads={heads} does not divide the hidden size {dim} of {where}")
    if "attention_head_dim" in given and int(given["attention_head_dim"]) * heads != dim:
        raise CheckpointError(f"config num_attention_heads={heads} x attention_head_dim={given['attention_head_dim']} "
                              f"is not the hidden size {dim} of {where}")
    qk = "blocks.0.self_attn.norm_q.weight"
    if qk not in keys or tuple(ckpt.shape(qk)) != (dim,):
        got = "is missing" if qk not in keys else f"has shape {tuple(ckpt.shape(qk))}"
        raise CheckpointError(f"{where}: {qk} {got}; only Wan's qk_norm 'rms_norm_across_heads' (one RMSNorm of "
                              f"size {dim} over all heads) is supported")
    cfg = {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(patch),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": in_ch,
        "out_channels": ckpt.shape("head.head.weight")[0] // int(np.prod(patch)),
        "text_dim": ckpt.shape("text_embedding.0.weight")[1],
        "freq_dim": ckpt.shape("time_embedding.0.weight")[1],
        "ffn_dim": ckpt.shape("blocks.0.ffn.0.weight")[0],
        "num_layers": num_layers,
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
        k_img = "blocks.0.cross_attn.k_img.weight"
        cfg["added_kv_proj_dim"] = ckpt.shape(k_img)[1] if k_img in keys else dim
        if "img_emb.emb_pos" in keys:
            cfg["pos_embed_seq_len"] = ckpt.shape("img_emb.emb_pos")[1]
    if n_vace:
        cfg["_class_name"] = "WanVACETransformer3DModel"
        cfg["vace_layers"] = list(found["vace_layers"])
        cfg["vace_in_channels"] = ckpt.shape("vace_patch_embedding.weight")[1]
    return {**cfg, **given}


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


def infer_vae_config(ckpt: OriginalCheckpoint, given: dict | None = None, where="the checkpoint") -> dict:
    """The VAE config of an original-format file (Wan2.1, or Wan2.2 when its stages are nested):
    `given` (a config, possibly partial) wins, sizes are read from the tensors. The latent mean and
    std the pipelines normalise with are in no tensor: those of Wan2.1's VAE (base 96, 16 latent
    channels) or Wan2.2's (base 160, 48 channels), else they must be given; so must `patch_size`
    unless the VAE takes RGB unpatchified (3 channels) or is Wan2.2's (12 = RGB in 2x2 patches)."""
    from .presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    given = dict(given or {})
    keys = set(ckpt.keys())
    base, in_channels = ckpt.shape("encoder.conv1.weight")[:2]
    z_dim = ckpt.shape("conv2.weight")[0]
    out_channels = ckpt.shape("decoder.head.2.weight")[0]
    residual = RESIDUAL_VAE_MARKER in keys
    if residual:
        levels = _count(keys, r"^encoder\.downsamples\.(\d+)\.")
        num_res_blocks = _count(keys, r"^encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.")
        dims = [ckpt.shape(f"encoder.downsamples.{lvl}.downsamples.0.residual.2.weight")[0] // base
                for lvl in range(levels)]
        temporal = [f"encoder.downsamples.{lvl}.downsamples.{num_res_blocks}.time_conv.weight" in keys
                    for lvl in range(levels - 1)]
    else:
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
    decoder_base = ckpt.shape("decoder.conv1.weight")[0] // dims[-1]

    released = None
    if (residual, base, z_dim) == (False, 96, 16):
        released = {"latents_mean": list(WAN21_LATENTS_MEAN), "latents_std": list(WAN21_LATENTS_STD), "patch_size": None}
    elif (residual, base, z_dim) == (True, 160, 48):
        released = {"latents_mean": list(WAN22_LATENTS_MEAN), "latents_std": list(WAN22_LATENTS_STD), "patch_size": 2}
    rgb = in_channels == 3 and out_channels == 3      # unpatchified RGB: no patch size to tell
    names = ["latents_mean", "latents_std"] + ([] if rgb else ["patch_size"])
    shapes = f"base_dim {base}, z_dim {z_dim}, {in_channels} input channels" + (
        "" if released else ", not the released Wan2.1 (96, 16) or Wan2.2 (160, 48) VAE")
    found = _settings(names, given, released, where, shapes, "vae")
    for n in ("latents_mean", "latents_std"):
        if found[n] is not None and len(found[n]) != z_dim:
            raise CheckpointError(f"config {n} has {len(found[n])} values but {where} has {z_dim} latent channels")
    patch = None if rgb else found["patch_size"]
    cfg = {"_class_name": "AutoencoderKLWan", "base_dim": base,
           "decoder_base_dim": decoder_base if residual or decoder_base != base else None, "z_dim": z_dim,
           "dim_mult": dims, "num_res_blocks": num_res_blocks, "attn_scales": [], "temperal_downsample": temporal,
           "dropout": 0.0, **{n: None if found[n] is None else list(found[n]) for n in ("latents_mean", "latents_std")},
           "is_residual": residual, "in_channels": in_channels, "out_channels": out_channels, "patch_size": patch,
           "scale_factor_temporal": 2 ** sum(temporal), "scale_factor_spatial": 2 ** len(temporal) * (patch or 1)}
    return {**cfg, **given}


# ---- UMT5 encoder files (ComfyUI `text_encoders/umt5_xxl_*.safetensors`: transformers' names) -------

UMT5_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"


def is_umt5_file(keys) -> bool:
    return UMT5_MARKER in set(keys)


# No tensor records a T5 encoder's layer-norm eps or relative-attention distance; every T5 / mT5 / UMT5
# checkpoint, of any size, uses these (transformers' defaults), so a `given` config is needed only to differ.
T5_FAMILY = {"relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6}


def infer_umt5_config(ckpt: OriginalCheckpoint, given: dict | None = None, where="the checkpoint") -> dict:
    """A UMT5 encoder config read off its tensors (eps and distance: T5_FAMILY); `given` wins."""
    keys = set(ckpt.keys())
    vocab, d_model = ckpt.shape("shared.weight")
    buckets, heads = ckpt.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    return {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": d_model,
            "d_kv": ckpt.shape(UMT5_MARKER)[0] // heads, "num_heads": heads,
            "d_ff": ckpt.shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
            "num_layers": _count(keys, r"^encoder\.block\.(\d+)\."), "relative_attention_num_buckets": buckets,
            **T5_FAMILY, "vocab_size": vocab, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new",
            "is_gated_act": True, "pad_token_id": 0, "eos_token_id": 1, **(given or {})}


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


def infer_wan_t5_config(ckpt, given: dict | None = None, where="the checkpoint") -> dict:
    """The UMT5 config of a Wan T5 encoder file, from its tensor shapes (eps and distance: T5_FAMILY);
    `given` wins."""
    keys = set(ckpt.keys())
    vocab, d_model = ckpt.shape("token_embedding.weight")
    buckets, heads = ckpt.shape("blocks.0.pos_embedding.embedding.weight")
    return {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": d_model,
            "d_kv": ckpt.shape(WAN_T5_MARKER)[0] // heads, "num_heads": heads,
            "d_ff": ckpt.shape("blocks.0.ffn.fc1.weight")[0], "num_layers": _count(keys, r"^blocks\.(\d+)\."),
            "relative_attention_num_buckets": buckets, **T5_FAMILY, "vocab_size": vocab,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True, "pad_token_id": 0,
            "eos_token_id": 1, **(given or {})}


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


# The CLIP vision tower Wan uses (OpenCLIP ViT-H/14): 16 heads, exact GELU. Other towers differ in both
# (ViT-B 12 heads; OpenAI's towers quick_gelu), and no tensor records either.
RELEASED_CLIP = {1280: {"num_attention_heads": 16, "hidden_act": "gelu"}}


def infer_clip_vision_config(ckpt, given: dict | None = None, where="the checkpoint") -> dict:
    """A CLIPVisionModel config from transformers-named tensors; `given` (a config, possibly partial,
    or a CLIPConfig with a `vision_config`) wins. The head count and activation are in no shape: those
    of Wan's 1,280-wide ViT-H/14 for that width, else they must be given. LayerNorm eps is 1e-5 in
    every CLIP."""
    given = dict(given or {})
    vision = given.get("vision_config", given)
    hidden, _, patch, _ = ckpt.shape("vision_model.embeddings.patch_embedding.weight")
    positions = ckpt.shape("vision_model.embeddings.position_embedding.weight")[0]
    side = int(round((positions - 1) ** 0.5))
    if side * side != positions - 1:
        raise CheckpointError(f"CLIP position embedding of {positions} rows is not 1 + a square grid")
    released = RELEASED_CLIP.get(hidden)
    found = _settings(["num_attention_heads", "hidden_act"], vision, released, where,
                      f"hidden size {hidden}" + ("" if released else ", not Wan's 1280-wide ViT-H/14"), "image_encoder")
    heads = int(found["num_attention_heads"])
    if heads < 1 or hidden % heads:
        raise CheckpointError(f"config num_attention_heads={heads} does not divide the hidden size {hidden} of {where}")
    keys = set(ckpt.keys())
    cfg = {"hidden_size": hidden, "patch_size": patch, "image_size": side * patch,
           "num_hidden_layers": _count(keys, r"^vision_model\.encoder\.layers\.(\d+)\."),
           "intermediate_size": ckpt.shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
           "num_attention_heads": heads, "num_channels": 3, "hidden_act": found["hidden_act"], "layer_norm_eps": 1e-5}
    if "vision_config" in given:
        return {**given, "vision_config": {**cfg, **vision}}
    return {**cfg, **given}
