"""How the Wan pack's values are kept in the output cache's disk tier (graphrt.disk_cache).

Tensors keep their dtype (bfloat16 travels as float32, which holds it exactly); the conditioning
and sampler-state dataclasses are stored field by field. Models have no codec on purpose: they
are rebuilt from their files, which the loaders' fingerprints already key.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import mindspore as ms

from graphrt.disk_cache import register_codec

from .wan.pipelines.conditioning import WanConditioning
from .wan.pipelines.sampling import SamplerState
from .wan.pipelines.step_cache import CacheState, Streak


def _encode_tensor(t: ms.Tensor) -> dict:
    exact = t.astype(ms.float32) if t.dtype == ms.bfloat16 else t
    return {"array": exact.asnumpy(), "dtype": str(t.dtype)}


def _decode_tensor(d: dict) -> ms.Tensor:
    t = ms.Tensor(np.asarray(d["array"]))
    return t.astype(ms.bfloat16) if d["dtype"] == str(ms.bfloat16) else t


def _dataclass_codec(cls):
    register_codec(cls, f"wan.{cls.__name__}",
                   lambda v: {f.name: getattr(v, f.name) for f in dataclasses.fields(v)},
                   lambda d: cls(**d))


register_codec(ms.Tensor, "mindspore.Tensor", _encode_tensor, _decode_tensor)
_dataclass_codec(WanConditioning)
_dataclass_codec(SamplerState)
_dataclass_codec(CacheState)
_dataclass_codec(Streak)
