"""The settings ComfyUI assumes for a Wan model file where its tensors record none.

ComfyUI's model detection (comfy/model_detection.py) takes heads = hidden size // 128 for every Wan
transformer, and its VACE model (comfy/ldm/wan/model.py VaceWanModel) puts the i-th VACE block on
layer i · (layers // VACE blocks); its VAE loader gives a Wan2.2 VAE 2×2 patches and every Wan VAE the
latent statistics of its channel count. For the released sizes these are the released models' values;
for any other size they are what ComfyUI would run, so the ComfyUI loader nodes load with them.
"""
from __future__ import annotations

import re
from pathlib import Path

from .checkpoint import Checkpoint
from .original_format import strip_prefix

COMFY_HEAD_DIM = 128


def comfy_transformer_config(path: str | Path) -> dict | None:
    """A partial config {num_attention_heads[, vace_layers]} for an original-format Wan transformer
    file as ComfyUI reads it, or None if the file is not one (the loader then reports what it is)."""
    ckpt = Checkpoint([Path(path)])
    prefix = strip_prefix(ckpt.keys())
    if prefix is None or f"{prefix}patch_embedding.weight" not in ckpt:
        return None
    dim = int(ckpt.shape(f"{prefix}patch_embedding.weight")[0])
    config = {"num_attention_heads": max(1, dim // COMFY_HEAD_DIM)}
    blocks = re.compile(re.escape(prefix) + r"(vace_)?blocks\.(\d+)\.")
    layers, vace = set(), set()
    for k in ckpt.keys():
        m = blocks.match(k)
        if m:
            (vace if m.group(1) else layers).add(int(m.group(2)))
    if vace:
        step = max(1, len(layers) // len(vace))
        config["vace_layers"] = list(range(0, len(layers), step))[:len(vace)]
    return config


def comfy_vae_config(path: str | Path) -> dict | None:
    """What ComfyUI fixes for a Wan VAE file (comfy/sd.py VAE): a Wan2.2 VAE (nested residual stages) works
    on 2×2 patches; the latent statistics are those of the latent format of its channel count (Wan2.1: 16,
    Wan2.2: 48). A partial config with them, or None if the file is no Wan VAE."""
    from .original_format import RESIDUAL_VAE_MARKER, vae_prefix
    from .presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    ckpt = Checkpoint([Path(path)])
    prefix = vae_prefix(ckpt.keys())
    if prefix is None or f"{prefix}conv2.weight" not in ckpt:
        return None
    z = int(ckpt.shape(f"{prefix}conv2.weight")[0])
    config = {}
    stats = {16: (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD), 48: (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD)}.get(z)
    if stats is not None:
        config.update(latents_mean=list(stats[0]), latents_std=list(stats[1]))
    if f"{prefix}{RESIDUAL_VAE_MARKER}" in ckpt:
        config["patch_size"] = 2
    return config or None
