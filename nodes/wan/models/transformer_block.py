"""The math of one Wan transformer block.

`block_stages` writes the block as the stages between its linear layers, and
`make_block_fn` composes them with the matmuls into one function of
(activations, *weights): run eagerly, or compiled whole with ms.jit, one graph
per shape shared by every block since the weights are inputs.

On CPU, from `CPU_FFN_OFFLOAD_MIN_ROWS` token rows, the compiled block stops
before its feed-forward, which `finish_on_cpu` runs in oneDNN (`onednn.feed_forward`).
Measured on the 1.3B block against the whole graph (median of interleaved runs):
0.92–0.97x at 1,950 tokens, 0.99x at 512, 1.02–1.06x at 192. Running every linear
layer in oneDNN, each stage compiled alone, was 1.07–1.14x at 192 tokens and 1.00x
at 1,950.

A self-attention whose score chunks one graph's memory plan cannot hold runs eagerly
between two graphs (`AttentionOutsideGraph`).
"""
from __future__ import annotations

import os
from collections import namedtuple
from functools import lru_cache

import mindspore as ms
from mindspore import ops

from .attention import attention
from ..backend import onednn
from .layers import badd, bmul, gelu_tanh, layer_norm, linear, rms_normalize
from ..backend.runtime import device

TEXT_TOKENS = 512  # diffusers splits image tokens from text tokens by this fixed length

_mm = ops.MatMul()


def _rms_norm(x, w, eps):
    return bmul(rms_normalize(x.astype(ms.float32), eps).astype(x.dtype), w)


def apply_rope(x, cos, sin, rot):
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, H, L, d]: x·cos + (x @ rot)·sin, with cos/sin
    broadcastable to x (each pair's value twice) and `rot` from `rope_pair_rotation`; the same
    float ops as diffusers' x0·cos − x1·sin, x0·sin + x1·cos, in float32."""
    b, h, l, d = x.shape
    dtype = x.dtype
    xf = x.astype(ms.float32)
    cross = _mm(xf.reshape(-1, d), rot).reshape(b, h, l, d)
    return (bmul(xf, cos) + bmul(cross, sin)).astype(dtype)


def split_context(context, image_branch: bool):
    """(text tokens, image tokens or None): image tokens come first, the text part is TEXT_TOKENS long."""
    if not image_branch:
        return context, None
    n_img = context.shape[1] - TEXT_TOKENS
    return context[:, n_img:], context[:, :n_img]


def modulation_term(mod, i: int):
    """Term i of (shift, scale, gate, FFN shift, FFN scale, FFN gate) from the block's modulation: mod
    [B, 6, D] gives [B, 1, D] (broadcast over tokens by bmul / badd, which tile it on CPU); per-token
    mod [B, L, 6, D] gives [B, L, D]. Slicing before broadcasting: expanding all six to [B, L, 6, D]
    first cost 21 ms at 192 tokens of the 1.3B model."""
    if mod.ndim == 4:
        return mod[:, :, i]
    return mod[:, i:i + 1]


def post_ffn(xf, ff, mod):
    """The FFN's gated residual: -> the block's output."""
    return (xf + bmul(ff.astype(ms.float32), modulation_term(mod, 5))).astype(ff.dtype)


Stages = namedtuple("Stages", "pre_attention self_attention_heads merge_heads post_self_attention cross_attention "
                               "pre_ffn")


@lru_cache(maxsize=None)
def block_stages(heads: int, eps: float, cross_attn_norm: bool, fused: bool) -> Stages:
    """The block between its linear layers, each stage a pure function of tensors."""

    def split_heads(x):
        b, l, d = x.shape
        return x.reshape(b, l, heads, d // heads).swapaxes(1, 2)

    def merge_heads(x):
        b, h, l, d = x.shape
        return x.swapaxes(1, 2).reshape(b, l, h * d)

    def pre_attention(x, temb, table):
        """-> (self-attention input, the modulation for `modulation_term`)."""
        if temb.ndim == 4:  # per-token (Wan2.2 TI2V): temb [B, L, 6, D]
            mod = table.unsqueeze(0) + temb.astype(ms.float32)
        else:               # temb [B, 6, D]
            mod = table + temb.astype(ms.float32)
        n = badd(bmul(layer_norm(x.astype(ms.float32), eps), 1 + modulation_term(mod, 1)), modulation_term(mod, 0))
        return n.astype(x.dtype), mod

    def self_attention_heads(q, k, v, norm_q, norm_k, cos, sin, rot):
        """Projected q, k, v -> normalised, rotated q, k and v, split into heads [B, H, L, d]."""
        q = apply_rope(split_heads(_rms_norm(q, norm_q, eps)), cos, sin, rot)
        k = apply_rope(split_heads(_rms_norm(k, norm_k, eps)), cos, sin, rot)
        return q, k, split_heads(v)

    def post_self_attention(x, out, mod, *norm2):
        """Gated residual, then the cross-attention's input (norm2 weight and bias if cross_attn_norm)."""
        x = (x.astype(ms.float32) + bmul(out.astype(ms.float32), modulation_term(mod, 2))).astype(x.dtype)
        if not cross_attn_norm:
            return x, x
        n = layer_norm(x.astype(ms.float32), eps, norm2[0].astype(ms.float32), norm2[1].astype(ms.float32))
        return x, n.astype(x.dtype)

    def cross_attention(q, k, v, norm_q, norm_k, *image):
        """Projected q (video) and k, v (text) -> attention output; `image`: (k, v, norm_added_k) of the
        I2V image tokens, whose attention output is added."""
        q = split_heads(_rms_norm(q, norm_q, eps))
        out = merge_heads(attention(q, split_heads(_rms_norm(k, norm_k, eps)), split_heads(v), use_fused=fused))
        if image:
            k_img, v_img, norm_img = image
            k_img = split_heads(_rms_norm(k_img, norm_img, eps))
            out = out + merge_heads(attention(q, k_img, split_heads(v_img), use_fused=fused))
        return out

    def pre_ffn(x, out, mod):
        """Residual, then the FFN's input: -> (x in float32, FFN input)."""
        x = x + out
        xf = x.astype(ms.float32)
        return xf, badd(bmul(layer_norm(xf, eps), 1 + modulation_term(mod, 4)), modulation_term(mod, 3)).astype(x.dtype)

    return Stages(pre_attention, self_attention_heads, merge_heads, post_self_attention, cross_attention, pre_ffn)


def unpack_weights(w, image_branch: bool, cross_attn_norm: bool):
    """The flat weight list of `WanTransformerBlock.weights()` -> (scale_shift_table, attn1 (10),
    attn2 (10, or 15 with the image branch), norm2 (weight, bias) or (), ffn (4))."""
    n_attn = 15 if image_branch else 10
    a2_end = 11 + n_attn
    norm2 = tuple(w[a2_end:a2_end + 2]) if cross_attn_norm else ()
    return w[0], tuple(w[1:11]), tuple(w[11:a2_end]), norm2, tuple(w[-4:])


@lru_cache(maxsize=None)
def make_block_fn(heads: int, eps: float, cross_attn_norm: bool, image_branch: bool, fused: bool,
                  ffn_outside: bool = False):
    """The whole block as one function (x, context, temb, cos, sin, rot, *weights) -> x; with
    `ffn_outside`, -> (x in float32, FFN input, modulation) for `finish_on_cpu`.

    Taking the weights as arguments lets one `ms.jit` graph serve every block: it compiles once per
    input shape, and each call frees its intermediates (one graph over all blocks would keep every
    block's activations alive)."""
    before, after = _block_halves(heads, eps, cross_attn_norm, image_branch, fused, ffn_outside)
    merge_heads = block_stages(heads, eps, cross_attn_norm, fused).merge_heads

    def block(x, context, temb, cos, sin, rot, *w):
        q, k, v, mod = before(x, temb, cos, sin, rot, *w)
        return after(x, merge_heads(attention(q, k, v, use_fused=fused)), mod, context, *w)

    return block


class AttentionOutsideGraph:
    """A block (`make_block_fn`'s signature and result) compiled as two graphs, the self-attention
    run eagerly between them. Inside one graph the score chunks of a long sequence are all
    planned at once: at 15,600 tokens the 1.3B block peaked at 13.8 GB compiled whole against
    5.6 GB this way, and 32,760 tokens (480p x 81 frames) did not fit 24 GB. Eagerly each chunk's
    scores are freed before the next is computed, and the rest of the block stays compiled."""

    def __init__(self, heads: int, eps: float, cross_attn_norm: bool, image_branch: bool, fused: bool,
                 ffn_outside: bool = False):
        before, after = _block_halves(heads, eps, cross_attn_norm, image_branch, fused, ffn_outside)
        self._before, self._after = ms.jit(before), ms.jit(after)
        self._merge_heads = block_stages(heads, eps, cross_attn_norm, fused).merge_heads
        self._fused = fused

    def __call__(self, x, context, temb, cos, sin, rot, *w):
        q, k, v, mod = self._before(x, temb, cos, sin, rot, *w)
        a = self._merge_heads(attention(q, k, v, use_fused=self._fused))
        del q, k, v
        return self._after(x, a, mod, context, *w)


@lru_cache(maxsize=None)
def attention_outside_graph(*config) -> AttentionOutsideGraph:
    """One `AttentionOutsideGraph` (and so one pair of graphs per shape) per block configuration."""
    return AttentionOutsideGraph(*config)


@lru_cache(maxsize=None)
def _block_halves(heads: int, eps: float, cross_attn_norm: bool, image_branch: bool, fused: bool,
                  ffn_outside: bool):
    """The block around its self-attention: `before(x, temb, cos, sin, rot, *weights)` -> (q, k, v
    in heads, modulation) and `after(x, attention output [B, L, D], modulation, context, *weights)`
    -> what `make_block_fn`'s block returns."""
    # Plain closures: graph mode cannot read functions off a namedtuple.
    stages = block_stages(heads, eps, cross_attn_norm, fused)
    pre_attention, self_attention_heads = stages.pre_attention, stages.self_attention_heads
    post_self_attention, cross_attention, pre_ffn = stages.post_self_attention, stages.cross_attention, stages.pre_ffn

    def before(x, temb, cos, sin, rot, *w):
        table, a1, _, _, _ = unpack_weights(w, image_branch, cross_attn_norm)
        n, mod = pre_attention(x, temb, table)
        q, k, v = self_attention_heads(linear(n, a1[0], a1[1]), linear(n, a1[2], a1[3]), linear(n, a1[4], a1[5]),
                                       a1[8], a1[9], cos, sin, rot)
        return q, k, v, mod

    def after(x, a, mod, context, *w):
        _, a1, a2, norm2, ffn = unpack_weights(w, image_branch, cross_attn_norm)
        x, n = post_self_attention(x, linear(a, a1[6], a1[7]), mod, *norm2)
        text, image = split_context(context, image_branch)
        if image_branch:
            a = cross_attention(linear(n, a2[0], a2[1]), linear(text, a2[2], a2[3]), linear(text, a2[4], a2[5]),
                                a2[8], a2[9], linear(image, a2[10], a2[11]), linear(image, a2[12], a2[13]), a2[14])
        else:
            a = cross_attention(linear(n, a2[0], a2[1]), linear(text, a2[2], a2[3]), linear(text, a2[4], a2[5]),
                                a2[8], a2[9])
        xf, n = pre_ffn(x, linear(a, a2[6], a2[7]), mod)
        if ffn_outside:
            return xf, n, mod
        return post_ffn(xf, linear(gelu_tanh(linear(n, ffn[0], ffn[1])), ffn[2], ffn[3]), mod)

    return before, after


# Token rows (batch x tokens) from which compiled CPU blocks leave the FFN to oneDNN (see the module doc).
CPU_FFN_OFFLOAD_MIN_ROWS = 1024


def onednn_matmuls(dtype) -> bool:
    """Whether feed-forwards may go to oneDNN (compiled blocks, the text projection): float32 on CPU
    with MindSpore's oneDNN loadable, unless GRAPHRT_CPU_MATMUL=native."""
    return (device() == "CPU" and dtype == ms.float32 and os.environ.get("GRAPHRT_CPU_MATMUL", "").lower() != "native"
            and onednn.available())


_post_ffn_jit = ms.jit(post_ffn)


def finish_on_cpu(out, w1, b1, w2, b2):
    """Complete a block compiled with `ffn_outside`: the FFN in oneDNN, its gated residual compiled."""
    xf, n, mod = out
    return _post_ffn_jit(xf, onednn.feed_forward(n, w1, b1, w2, b2), mod)
