"""A LoRA applied to the Wan transformer without copying the model.

`with_lora(transformer, lora, strength)` returns a view that shares the base model's parameters:
the patched weights of a block exist only while that block runs (one block at a time), so a LoRA
costs a few small matmuls per block instead of a second copy of the model, and the base model
cached by the graph stays as it was. Each module gets `W + strength · scale · B·A` and
`b + strength · bias delta`, as diffusers (PEFT) computes it; the scale (alpha / rank, per module)
and the deltas are decided by `checkpoints.lora_files`, which reads the files.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import mindspore as ms
from mindspore import ops

_mm = ops.MatMul()


@dataclass
class LoraWeights:
    """One LoRA file, by our parameter and module names."""
    down: dict = field(default_factory=dict)       # module -> A [rank, in]
    up: dict = field(default_factory=dict)         # module -> B [out, rank]
    scales: dict = field(default_factory=dict)     # module -> factor of B·A (alpha / rank, PEFT's scaling)
    bias: dict = field(default_factory=dict)       # module -> bias delta [out], its scale already applied
    full: dict = field(default_factory=dict)       # parameter name -> full delta (same shape as the parameter)
    skipped: dict = field(default_factory=dict)    # file key -> why it is not applied
    source: str = ""

    def scale(self, module: str) -> float:
        return float(self.scales.get(module, 1.0))

    def modules(self) -> set:
        return set(self.down) | set(self.bias) | {n.rsplit(".", 1)[0] for n in self.full}

    def cache_nbytes(self) -> int:
        return sum(int(a.nbytes) for d in (self.down, self.up, self.bias, self.full) for a in d.values())


class _Patch:
    """The weights a block should use: its parameters plus the LoRA deltas of that block."""

    def __init__(self, deltas: dict):
        self.deltas = deltas             # id(parameter) -> [callable(param) -> delta tensor]

    def __call__(self, weights, values=None):
        """`values`: the weights' values when they are not the parameters' own (a streamed block)."""
        out = []
        for i, w in enumerate(weights):
            base = w if values is None else values[i]
            fns = self.deltas.get(id(w))
            if not fns:
                out.append(base)
                continue
            value = base.astype(ms.float32)
            for fn in fns:
                value = value + fn()
            out.append(value.astype(base.dtype))
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
            for name, dw in lora.full.items():
                t = ms.Tensor(dw * np.float32(strength))
                add(name, lambda t=t: t)
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
