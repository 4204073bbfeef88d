"""The one attention entry point every Wan model calls.

Ascend has a fused flash-attention kernel; CPU and GPU take an exact math path
that splits long query sequences into blocks so the score matrix stays bounded.
The scale is always passed explicitly (a fused kernel's default of 1.0 silently
changes results, wan_models.md §9).
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import mint, ops

from .layers import expand_to
from ..backend.runtime import device

# Bytes of float32 attention scores materialised at once on the math path.
SCORE_BUDGET_BYTES = 512 * 1024 * 1024

_bmm_tb = ops.BatchMatMul(transpose_b=True)
_bmm = ops.BatchMatMul()


def score_rows(b: int, h: int, lk: int) -> int:
    """Query rows per chunk of the math path: the most whose float32 scores fit SCORE_BUDGET_BYTES."""
    return max(1, SCORE_BUDGET_BYTES // max(1, b * h * lk * 4))


def graph_score_nbytes(b: int, h: int, lq: int, lk: int) -> int:
    """Score memory of the math path compiled into one graph, which plans all its chunks together:
    twice their total (measured 1.2x at 64 MB chunks, 0.4-0.75x at 512 MB)."""
    rows = score_rows(b, h, lk)
    return 2 * -(-lq // rows) * min(SCORE_BUDGET_BYTES, b * h * rows * lk * 4)


def _math_attention(q, k, v, scale, bias):
    b, h, lq, d = q.shape
    lk = k.shape[2]
    # Scaling q (L·d values) instead of the scores (L·L) is 1.5x faster at 2k tokens.
    qf = (q if scale == 1.0 else q * scale).reshape(b * h, lq, d)
    kf = k.reshape(b * h, lk, d)
    vf = v.reshape(b * h, lk, v.shape[-1])
    if bias is not None:
        bias = expand_to(bias, (b, h, lq, lk)).reshape(b * h, lq, lk)   # CPU: same-shape adds are faster
    rows = score_rows(b, h, lk)
    outs = []
    for start in range(0, lq, rows):
        stop = min(lq, start + rows)
        whole = start == 0 and stop == lq   # slicing costs 1.5x here under ms.jit even when a no-op
        s = _bmm_tb(qf if whole else qf[:, start:stop], kf)
        if bias is not None:
            s = s + (bias if whole else bias[:, start:stop])
        if s.dtype == ms.float32:
            p = mint.softmax(s, dim=-1)
        else:
            p = mint.softmax(s.astype(ms.float32), dim=-1)
        if p.dtype != vf.dtype:   # half-precision v (a float32 bias promoted the scores): as transformers' T5
            p = p.astype(vf.dtype)
        outs.append(_bmm(p, vf))
    out = outs[0] if len(outs) == 1 else mint.cat(outs, dim=1)
    return out.reshape(b, h, lq, v.shape[-1])


def _flash_attention(q, k, v, scale, bias):
    return ops.flash_attention_score(
        q, k, v, q.shape[1], real_shift=None if bias is None else bias.astype(q.dtype),
        scalar_value=scale, input_layout="BNSD")


def attention(q, k, v, scale: float | None = None, bias=None, use_fused: bool | None = None):
    """softmax(q kᵀ · scale + bias) v for q [B,H,Lq,d], k/v [B,H,Lk,d].

    `bias` is an additive float tensor broadcastable to [B,H,Lq,Lk] (T5's
    position bias plus padding mask). `use_fused=None` picks the fused kernel
    only where it exists (Ascend) and for half-precision inputs: float32 runs
    stay exact instead of being rounded to fp16 behind the user's back.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if use_fused is None:
        use_fused = device() == "Ascend" and q.dtype in (ms.float16, ms.bfloat16)
    if use_fused:
        return _flash_attention(q, k, v, scale, bias)
    return _math_attention(q, k, v, scale, bias)
