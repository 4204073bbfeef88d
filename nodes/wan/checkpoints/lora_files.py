"""LoRA files in the formats people ship, read onto the Wan transformer's parameter names.

Accepted files (wan_models.md §8): diffusers / PEFT (`transformer.blocks.0.attn1.to_q.lora_A.weight`),
original / ComfyUI (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.alpha`, `.diff_b`)
and kohya / musubi (`lora_unet_blocks_0_self_attn_q.lora_down.weight`). Full-weight `.diff` deltas
are dropped except `head.head.diff`, as diffusers does, and what is dropped is reported.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..models.lora import LoraWeights
from .checkpoint import Checkpoint
from .original_format import original_key
from .safetensors_io import CheckpointError

_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.")
_KOHYA_TOKENS = ("self_attn", "cross_attn", "k_img", "v_img", "norm_k_img", "ffn", "time_projection",
                 "text_embedding", "time_embedding", "img_emb", "head")
_A = (".lora_A.weight", ".lora_down.weight")
_B = (".lora_B.weight", ".lora_up.weight")


def _kohya_module(name: str) -> str:
    """lora_unet_blocks_0_self_attn_q -> blocks.0.self_attn.q (underscores inside known tokens kept)."""
    rest = name[len("lora_unet_"):]
    protected = {tok: tok.replace("_", "\0") for tok in _KOHYA_TOKENS}
    for tok in sorted(protected, key=len, reverse=True):
        rest = rest.replace(tok, protected[tok])
    return rest.replace("_", ".").replace("\0", "_")


def _split(key: str):
    """(module, kind) of a LoRA key; kind in A, B, B_bias, alpha, diff_b, diff, or None."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for suffix, kind in [(s, "A") for s in _A] + [(s, "B") for s in _B] + [
            (".lora_B.bias", "B_bias"), (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"),
            (".diff_m", "diff_m")]:
        if key.endswith(suffix):
            module = key[:-len(suffix)]
            if module.startswith("lora_unet_"):
                module = _kohya_module(module)
            return module, kind
    return key, None


def read_lora(path: str | Path, transformer) -> LoraWeights:
    """The LoRA file at `path`, mapped onto `transformer`'s parameter names (any accepted format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    ckpt = Checkpoint([path])
    shapes = {n: tuple(p.shape) for n, p in transformer.parameters_and_names()}
    names = set(shapes)
    ours = {n.rsplit(".", 1)[0] for n in names}
    from_original = {original_key(n).rsplit(".", 1)[0]: n.rsplit(".", 1)[0] for n in names}
    lora = LoraWeights(source=str(path))
    for key in ckpt.keys():
        module, kind = _split(key)
        target = module if module in ours else from_original.get(module)
        if kind is None or target is None or kind == "diff_m" or (kind == "diff" and target != "proj_out") \
                or (kind == "diff_b" and ".norm" in "." + module):
            lora.dropped.append(key)
            continue
        value = np.asarray(ckpt.get(key), np.float32)
        if kind == "A":
            lora.down[target] = value
        elif kind == "B":
            lora.up[target] = value
        elif kind == "alpha":
            lora.alpha[target] = float(value.reshape(-1)[0])
        elif kind in ("diff_b", "B_bias"):
            lora.bias[target] = value
        else:
            lora.full[target] = value
    unpaired = sorted(set(lora.down) ^ set(lora.up))
    if unpaired:
        raise CheckpointError(f"{path}: LoRA module '{unpaired[0]}' has only one of its down/up (A/B) matrices")
    for module, a in lora.down.items():
        w = f"{module}.weight"
        want = shapes.get(w)
        got = (lora.up[module].shape[0], a.shape[1])
        if want is None or len(want) != 2 or got != want[:2]:
            raise CheckpointError(f"{path}: LoRA for '{module}' is {got[0]}×{got[1]} but the model's weight is "
                                  f"{want}; is this LoRA for another Wan model size?")
    if not lora.modules():
        raise CheckpointError(f"{path} holds no LoRA weights this transformer has (first keys: "
                              f"{sorted(ckpt.keys())[:4]})")
    if lora.dropped:
        warnings.warn(f"{path.name}: {len(lora.dropped)} key(s) not applied, as diffusers does not apply them "
                      f"(first: {lora.dropped[0]})")
    return lora


