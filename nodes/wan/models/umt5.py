"""The UMT5 text encoder (transformers' `UMT5EncoderModel`) on MindSpore.

T5 semantics: unscaled embeddings, RMS pre-norms with float32 statistics, no
1/sqrt(d) in attention, an additive relative-position bias that every UMT5
layer owns, gated GELU-tanh feed-forward. The bucket table is integer data
computed in numpy: MindSpore CPU's log is off by one bucket at 16, 32, 64...
(mindspore_cpu.md §7.3).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import mindspore as ms
from mindspore import Parameter, mint, nn, ops

from .attention import attention
from .layers import bmul, gelu_tanh, linear, param_init, row_mean, Linear
from ..backend.runtime import device


@lru_cache(maxsize=16)
def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets [q_len, k_len] (int32), in torch's float32 arithmetic."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        log_ratio = np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.float32)
    large = np.where(rel < max_exact, 0, large).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


def t5_norm(x, weight, eps: float):
    """T5's RMS norm: float32 statistic, no mean subtraction, cast to a half-precision weight."""
    xf = x.astype(ms.float32)
    x = bmul(x, mint.rsqrt(row_mean(xf * xf) + eps))
    if weight.dtype in (ms.float16, ms.bfloat16):
        x = x.astype(weight.dtype)
    return bmul(weight, x)


def umt5_block(x, buckets, mask_bias, weights, heads: int, d_kv: int, eps: float):
    """One UMT5 layer on x [B, L, D] from its weights (`UMT5Block.weights()` order): self-attention
    with the layer's own relative-position bias, then the gated GELU-tanh feed-forward."""
    ln1, wq, wk, wv, wo_attn, rel_bias, ln2, wi_0, wi_1, wo = weights
    b, l, _ = x.shape
    h = t5_norm(x, ln1, eps)
    split = lambda t: t.reshape(b, l, heads, d_kv).swapaxes(1, 2)
    q, k, v = split(linear(h, wq)), split(linear(h, wk)), split(linear(h, wv))
    pos = ops.gather(rel_bias, buckets, 0).permute(2, 0, 1).unsqueeze(0)          # [1, H, L, L]
    out = attention(q, k, v, scale=1.0, bias=pos.astype(ms.float32) + mask_bias, use_fused=False)
    x = x + linear(out.swapaxes(1, 2).reshape(b, l, heads * d_kv), wo_attn).astype(x.dtype)
    h = t5_norm(x, ln2, eps)
    h = gelu_tanh(linear(h, wi_0)) * linear(h, wi_1)
    return x + linear(h.astype(wo.dtype), wo).astype(x.dtype)


class T5LayerNorm(nn.Cell):
    def __init__(self, dim, eps, dtype):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(param_init("ones", (dim,), dtype), name="weight")

    def construct(self, x):
        return t5_norm(x, self.weight, self.eps)


class SelfAttention(nn.Cell):
    """Holds the attention parameters under transformers' names; the math is `umt5_block`."""

    def __init__(self, d_model, d_kv, heads, num_buckets, dtype):
        super().__init__()
        inner = d_kv * heads
        self.q = Linear(d_model, inner, bias=False, dtype=dtype)
        self.k = Linear(d_model, inner, bias=False, dtype=dtype)
        self.v = Linear(d_model, inner, bias=False, dtype=dtype)
        self.o = Linear(inner, d_model, bias=False, dtype=dtype)
        self.relative_attention_bias = _Embedding(num_buckets, heads, dtype)


class _Embedding(nn.Cell):
    def __init__(self, num, dim, dtype):
        super().__init__()
        self.weight = Parameter(param_init("zeros", (num, dim), dtype), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class _AttnLayer(nn.Cell):
    def __init__(self, d_model, d_kv, heads, buckets, eps, dtype):
        super().__init__()
        self.SelfAttention = SelfAttention(d_model, d_kv, heads, buckets, dtype)
        self.layer_norm = T5LayerNorm(d_model, eps, dtype)


class _GatedFF(nn.Cell):
    def __init__(self, d_model, d_ff, dtype, wo_dtype):
        super().__init__()
        self.wi_0 = Linear(d_model, d_ff, bias=False, dtype=dtype)
        self.wi_1 = Linear(d_model, d_ff, bias=False, dtype=dtype)
        self.wo = Linear(d_ff, d_model, bias=False, dtype=wo_dtype)


class _FFLayer(nn.Cell):
    def __init__(self, d_model, d_ff, eps, dtype, wo_dtype):
        super().__init__()
        self.DenseReluDense = _GatedFF(d_model, d_ff, dtype, wo_dtype)
        self.layer_norm = T5LayerNorm(d_model, eps, dtype)


class UMT5Block(nn.Cell):
    def __init__(self, d_model, d_kv, d_ff, heads, buckets, eps, dtype, wo_dtype):
        super().__init__()
        self.heads, self.d_kv, self.eps = heads, d_kv, eps
        self.layer = nn.CellList([_AttnLayer(d_model, d_kv, heads, buckets, eps, dtype),
                                  _FFLayer(d_model, d_ff, eps, dtype, wo_dtype)])

    def weights(self):
        attn, ff = self.layer[0], self.layer[1]
        sa, dense = attn.SelfAttention, ff.DenseReluDense
        return (attn.layer_norm.weight, sa.q.weight, sa.k.weight, sa.v.weight, sa.o.weight,
                sa.relative_attention_bias.weight, ff.layer_norm.weight, dense.wi_0.weight, dense.wi_1.weight,
                dense.wo.weight)

    def construct(self, x, buckets, mask_bias, weights=None):
        """`weights`: the values to use instead of the parameters' (a streamed encoder's, in
        `weights()` order: `models.block_stream`)."""
        return umt5_block(x, buckets, mask_bias, self.weights() if weights is None else weights,
                          self.heads, self.d_kv, self.eps)


class _Encoder(nn.Cell):
    def __init__(self, cfg, dtype, wo_dtype):
        super().__init__()
        self.block = nn.CellList([UMT5Block(cfg["d_model"], cfg["d_kv"], cfg["d_ff"], cfg["num_heads"],
                                            cfg["relative_attention_num_buckets"], cfg["layer_norm_epsilon"],
                                            dtype, wo_dtype) for _ in range(cfg["num_layers"])])
        self.final_layer_norm = T5LayerNorm(cfg["d_model"], cfg["layer_norm_epsilon"], dtype)


class UMT5EncoderModel(nn.Cell):
    WEIGHTS_NAME = "model"
    KEEP_FP32 = ("wo",)          # transformers keeps `wo` in fp32 for half-precision loads
    # ComfyUI's umt5_xxl_* files also carry the sentencepiece tokenizer as a uint8 `spiece_model` tensor
    IGNORE_UNEXPECTED = ("encoder.embed_tokens.weight", "decoder.", "spiece_model")

    DEFAULTS = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    layer_norm_epsilon=1e-6, vocab_size=256384, feed_forward_proj="gated-gelu")

    # What a streamed encoder (`offload="blocks"`, `checkpoints.streaming`) never allocates: its
    # blocks, handed out by a `BlockStream`, and the 1 G-element token embedding, of which only the
    # prompt's rows are read from the file.
    BLOCK_PREFIX = "encoder.block."
    ROWS_FROM_FILE = ("shared.weight",)

    def __init__(self, config: dict, dtype=ms.float32):
        super().__init__()
        cfg = {**self.DEFAULTS, **{k: v for k, v in config.items() if k in self.DEFAULTS}}
        if cfg["feed_forward_proj"] != "gated-gelu":
            raise ValueError(f"only UMT5 with feed_forward_proj='gated-gelu' is supported, got {cfg['feed_forward_proj']!r}")
        self.cfg, self.config, self.dtype = cfg, dict(config), dtype
        wo_dtype = ms.float32 if dtype in (ms.float16, ms.bfloat16) else dtype
        self.shared = _Embedding(cfg["vocab_size"], cfg["d_model"], dtype)
        self.encoder = _Encoder(cfg, dtype, wo_dtype)
        self._device = device()
        self._block_stream = None
        self._rows = {}             # parameter name -> rows(ids) reader, for ROWS_FROM_FILE when streamed

    @classmethod
    def from_config(cls, config: dict, dtype=ms.float32) -> "UMT5EncoderModel":
        return cls(config, dtype=dtype)

    def construct(self, input_ids, attention_mask=None):
        ids = np.asarray(input_ids.asnumpy() if hasattr(input_ids, "asnumpy") else input_ids).astype(np.int32)
        b, l = ids.shape
        mask = np.ones((b, l), np.float32) if attention_mask is None else \
            np.asarray(attention_mask.asnumpy() if hasattr(attention_mask, "asnumpy") else attention_mask, np.float32)
        # padded keys get the dtype minimum, as transformers' bidirectional mask does
        mask_bias = ms.Tensor(((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32))
        buckets = ms.Tensor(relative_buckets(l, l, self.cfg["relative_attention_num_buckets"],
                                             self.cfg["relative_attention_max_distance"]))
        rows = self._rows.get("shared.weight")
        x = self.shared(ms.Tensor(ids)) if rows is None else rows(ids)
        stream = self._block_stream
        for k, block in enumerate(self.encoder.block):
            x = block(x, buckets, mask_bias, weights=None if stream is None else stream.get(k))
        return self.encoder.final_layer_norm(x)

    # -- streaming (`checkpoints.streaming.attach_block_stream`) ---------------------------------
    @property
    def blocks(self):
        return self.encoder.block

    def stream_blocks(self, stream):
        """Take the blocks' weights from `stream` (a `block_stream.BlockStream` over `self.blocks`, in
        order) instead of their parameters, which then stay unallocated; None goes back to them."""
        self._block_stream = stream
        return self

    def rows_from_file(self, name: str, rows) -> None:
        """Look parameter `name` (one of ROWS_FROM_FILE) up by `rows(ids) -> Tensor [*ids.shape, D]`
        instead of holding it."""
        if name not in self.ROWS_FROM_FILE:
            raise ValueError(f"{name} is not read by rows; these are: {self.ROWS_FROM_FILE}")
        self._rows[name] = rows

    @property
    def block_stream(self):
        return self._block_stream

    def streamed_parameter(self, name: str) -> bool:
        """Whether the parameter `name` is supplied from the file as needed (never allocated)."""
        return name in self._rows or (self._block_stream is not None and name.startswith(self.BLOCK_PREFIX))

    def resident_nbytes(self) -> int:
        """Bytes of weights held now: every parameter, or for a streamed encoder the final norm
        plus the blocks its stream holds widened."""
        total = sum(int(np.prod(p.shape)) * p.itemsize for name, p in self.parameters_and_names()
                    if not self.streamed_parameter(name))
        return total + (self._block_stream.resident_nbytes() if self._block_stream is not None else 0)
