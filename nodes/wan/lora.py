"""LoRA for the Wan transformer, in the formats people ship, applied without copying the model.

Accepted files (wan_models.md §8): diffusers / PEFT (`transformer.blocks.0.attn1.to_q.lora_A.weight`),
original / ComfyUI (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.alpha`, `.diff_b`)
and kohya / musubi (`lora_unet_blocks_0_self_attn_q.lora_down.weight`). Semantics follow
diffusers: each module gets `W + strength · alpha/rank · B·A` (and `b + strength · diff_b`);
full-weight `.diff` deltas are dropped except `head.head.diff`, as diffusers does, and what is
dropped is reported.

`with_lora(transformer, lora, strength)` returns a view that shares the base model's parameters:
the patched weights of a block exist only while that block runs (one block at a time), so a LoRA
costs a few small matmuls per block instead of a second copy of the model, and the base model
cached by the graph stays as it was.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import ops

from .safetensors_io import CheckpointError
from .single_file import original_key
from .weights import Checkpoint

_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.")
_KOHYA_TOKENS = ("self_attn", "cross_attn", "k_img", "v_img", "norm_k_img", "ffn", "time_projection",
                 "text_embedding", "time_embedding", "img_emb", "head")
_A = (".lora_A.weight", ".lora_down.weight")
_B = (".lora_B.weight", ".lora_up.weight")
_mm = ops.MatMul()


@dataclass
class LoraWeights:
    """One LoRA file, by our parameter-module names: low-rank pairs, alphas and bias deltas."""
    down: dict = field(default_factory=dict)       # module -> A [rank, in]
    up: dict = field(default_factory=dict)         # module -> B [out, rank]
    alpha: dict = field(default_factory=dict)      # module -> alpha (scale = alpha / rank)
    bias: dict = field(default_factory=dict)       # module -> bias delta [out]
    full: dict = field(default_factory=dict)       # module -> full weight delta (head.head.diff only)
    dropped: list = field(default_factory=list)
    source: str = ""

    def scale(self, module: str) -> float:
        rank = self.down[module].shape[0]
        return float(self.alpha.get(module, rank)) / rank

    def modules(self) -> set:
        return set(self.down) | set(self.bias) | set(self.full)

    def cache_nbytes(self) -> int:
        return sum(int(a.nbytes) for d in (self.down, self.up, self.bias, self.full) for a in d.values())


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


class _Patch:
    """The weights a block should use: its parameters plus the LoRA deltas of that block."""

    def __init__(self, deltas: dict):
        self.deltas = deltas             # id(parameter) -> [callable(param) -> delta tensor]

    def __call__(self, weights):
        out = []
        for w in weights:
            fns = self.deltas.get(id(w))
            if not fns:
                out.append(w)
                continue
            value = w.astype(ms.float32)
            for fn in fns:
                value = value + fn()
            out.append(value.astype(w.dtype))
        return tuple(out)


class LoraTransformer:
    """A Wan transformer seen through one or more LoRAs. Behaves as the base model (config,
    compile, dtype, ...); calling it runs the base model with the patched weights."""

    def __init__(self, base, loras: tuple):
        self.base = base
        self.loras = loras                   # ((LoraWeights, strength), ...)
        self._prepared = None                # (params, deltas), built on first call, reused every step

    def __getattr__(self, name):
        return getattr(self.base, name)

    def get_parameters(self):
        return self.base.get_parameters()

    def _deltas(self):
        params = dict(self.base.parameters_and_names())
        deltas: dict = {}

        def add(name, fn):
            if name in params:
                deltas.setdefault(name, []).append(fn)

        for lora, strength in self.loras:
            for module, a in lora.down.items():
                s = strength * lora.scale(module)
                a_t, b_t = ms.Tensor(a), ms.Tensor(lora.up[module] * np.float32(s))
                add(f"{module}.weight", lambda a_t=a_t, b_t=b_t: _mm(b_t, a_t))
            for module, db in lora.bias.items():
                t = ms.Tensor(db * np.float32(strength))
                add(f"{module}.bias", lambda t=t: t)
            for module, dw in lora.full.items():
                t = ms.Tensor(dw * np.float32(strength))
                add(f"{module}.weight", lambda t=t: t)
        return params, deltas

    @contextmanager
    def _applied(self):
        if self._prepared is None:           # device tensors of the scaled A/B, made once, not per step
            self._prepared = self._deltas()
        params, deltas = self._prepared
        in_blocks = {id(params[n]): fns for n, fns in deltas.items() if re.match(r"(vace_)?blocks\.\d+\.", n)}
        # Outside the blocks (embedders, head: small) the parameter data is swapped for the call.
        swapped = []
        try:
            for name, fns in deltas.items():
                if id(params[name]) in in_blocks:
                    continue
                p = params[name]
                old = p.value().copy() if hasattr(p, "value") else p.copy()
                new = p.astype(ms.float32)
                for fn in fns:
                    new = new + fn()
                swapped.append((p, old))
                p.set_data(new.astype(p.dtype))
            self.base._active_patch = _Patch(in_blocks)
            yield
        finally:
            self.base._active_patch = None
            for p, old in reversed(swapped):
                p.set_data(old)

    def __call__(self, *args, **kwargs):
        with self._applied():
            return self.base(*args, **kwargs)


def with_lora(transformer, lora: LoraWeights, strength: float = 1.0):
    """`transformer` seen through `lora` at `strength` (LoRAs stack: apply again to add another)."""
    if isinstance(transformer, LoraTransformer):
        return LoraTransformer(transformer.base, transformer.loras + ((lora, float(strength)),))
    return LoraTransformer(transformer, ((lora, float(strength)),))
