"""Building blocks shared by the transformer, UMT5 and CLIP code.

Parameters keep the torch/diffusers names (`weight`, `bias`) so checkpoints load
without renaming. Every op here has a kernel on CPU, GPU and Ascend.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, mint, nn, ops
from mindspore.common.initializer import initializer

from ..backend import runtime
from ..backend.runtime import TILE_BROADCASTS


def param_init(kind: str, shape, dtype):
    """A lazily-initialised parameter value: no memory is allocated until the
    checkpoint's tensor replaces it, so a load never holds two copies of the model."""
    return initializer(kind, tuple(shape), dtype)


def broadcast_shape(a, b) -> tuple:
    """numpy's broadcast of two static shapes (usable inside ms.jit)."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    return tuple([max(i, j) for i, j in zip(a, b)])


# Below this many elements the CPU workarounds here (tiling, matmul statistics) cost more in op
# launches (eagerly ~100 µs each) than they save: small tensors take the plain kernel.
TILE_MIN_ELEMENTS = 1 << 16


def _numel(shape) -> int:
    size = 1
    for n in shape:
        size *= n
    return size


def expand_to(y, shape):
    """`y` materialised at the broadcast `shape` (a no-op off CPU or when it already has it).

    MindSpore's CPU kernels for broadcasting binary ops are slow: at [1,1950,1536],
    x * w[1536] takes 24–54 ms eagerly and 15 ms under ms.jit, while tiling w and
    multiplying same-shape tensors takes 8 and 9 ms. The float ops are the same.
    """
    if not TILE_BROADCASTS or tuple(y.shape) == tuple(shape) or _numel(shape) < TILE_MIN_ELEMENTS:
        return y
    full = (1,) * (len(shape) - y.ndim) + tuple(y.shape)
    return ops.tile(y.reshape(full), tuple([s // d for s, d in zip(shape, full)]))


def bmul(x, y):
    """x * y with broadcasting, fast on CPU (see `expand_to`)."""
    shape = broadcast_shape(x.shape, y.shape)
    return expand_to(x, shape) * expand_to(y, shape)


def badd(x, y):
    """x + y with broadcasting, fast on CPU (see `expand_to`)."""
    shape = broadcast_shape(x.shape, y.shape)
    return expand_to(x, shape) + expand_to(y, shape)


_mm = ops.MatMul()


def _stats_by_matmul(shape) -> bool:
    return runtime.ROW_STATS_BY_MATMUL and _numel(shape) >= TILE_MIN_ELEMENTS


def row_mean(x):
    """The mean over the last axis of a float32 tensor, keeping that axis.

    On CPU (`runtime.ROW_STATS_BY_MATMUL`) a matmul with a ones column: MindSpore CPU's
    ReduceMean over the last axis takes 1.3 ms at [192, 1536] and 13.5 ms at [1950, 1536]
    under ms.jit, the matmul 4x less. The same sum, rounded differently (within 1e-7).
    """
    if not _stats_by_matmul(x.shape):
        return mint.mean(x, -1, keepdim=True)
    d = x.shape[-1]
    s = _mm(x.reshape(-1, d), ops.ones((d, 1), x.dtype))
    return (s / d).reshape(x.shape[:-1] + (1,))


def rms_normalize(x, eps: float):
    """x / sqrt(mean(x²) + eps) over the last axis, for a float32 x (the unscaled RMSNorm)."""
    return bmul(x, mint.rsqrt(row_mean(x * x) + eps))


def layer_norm(x, eps: float, weight=None, bias=None):
    """torch's layer_norm over the last axis of a float32 x (biased variance), with an optional
    affine weight and bias. On CPU from `row_mean` (2-5x faster than the LayerNorm kernel there);
    elsewhere, and for small tensors, the LayerNorm primitive (mint's has no CPU kernel)."""
    d = x.shape[-1]
    if not _stats_by_matmul(x.shape):
        if weight is None:
            weight, bias = ops.ones((d,), x.dtype), ops.zeros((d,), x.dtype)
        return ops.LayerNorm(-1, -1, eps)(x, weight, bias)[0]
    xc = badd(x, -row_mean(x))
    y = bmul(xc, mint.rsqrt(row_mean(xc * xc) + eps))
    if weight is not None:
        y = badd(bmul(y, weight), bias)
    return y


# Adding the bias with BiasAdd on the 2-D matmul output is ~40% cheaper in eager
# mode than a broadcast `+` at Wan sizes (1,950×8,960); results are identical.
bias_add = ops.BiasAdd()
_mm_tb = ops.MatMul(transpose_b=True)


def linear(x, w, b=None):
    """x @ w^T (+ b) for w stored (out, in) as in torch, over the last axis of x: `Linear` as a
    function of its weights (streamed and compiled blocks pass them in)."""
    shape = x.shape
    y = _mm_tb(x.reshape(-1, shape[-1]), w)
    if b is not None:
        y = bias_add(y, b)
    return y.reshape(shape[:-1] + (w.shape[0],))


class Linear(nn.Cell):
    """y = x @ W^T + b with W stored (out, in) as in torch.

    `MatMul(transpose_b=True)` on the torch layout is 2–3x faster than a plain
    matmul on MindSpore CPU (mindspore_cpu.md §3).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=ms.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(param_init("zeros", (out_features, in_features), dtype), name="weight")
        self.bias = Parameter(param_init("zeros", (out_features,), dtype), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        if self.bias is not None:
            y = bias_add(y, self.bias)
        return y.reshape(shape[:-1] + (self.out_features,))


class LayerNorm(nn.Cell):
    """LayerNorm over the last dim; `affine=False` keeps no parameters (like torch).

    The statistic is computed in float32 whatever the input dtype (FP32LayerNorm).
    """

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True, dtype=ms.float32):
        super().__init__()
        self.dim, self.eps, self.affine = dim, eps, affine
        if affine:
            self.weight = Parameter(param_init("ones", (dim,), dtype), name="weight")
            self.bias = Parameter(param_init("zeros", (dim,), dtype), name="bias")
        else:
            self.weight = None
            self.bias = None

    def construct(self, x):
        w = b = None
        if self.affine:
            w, b = self.weight.astype(ms.float32), self.bias.astype(ms.float32)
        return layer_norm(x.astype(ms.float32), self.eps, w, b).astype(x.dtype)


class RMSNorm(nn.Cell):
    """torch.nn.RMSNorm semantics: fp32 statistic, cast back, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(param_init("ones", (dim,), dtype), name="weight")

    def construct(self, x):
        dtype = x.dtype
        xf = x.astype(ms.float32)
        return bmul(rms_normalize(xf, self.eps).astype(dtype), self.weight)


_GELU_TANH_K = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """GELU with the tanh approximation, written as x*sigmoid(2k(x+0.044715x^3)).

    Mathematically identical to 0.5x(1+tanh(k(...))); MindSpore CPU's tanh has
    1e-4 relative error while sigmoid is accurate to 4e-6 (mindspore_cpu.md §7).
    """
    return x * mint.sigmoid(_GELU_TANH_K * (x + 0.044715 * x * x * x))


def gelu_exact(x):
    """GELU with erf (torch's default `approximate='none'`)."""
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


def silu(x):
    return mint.nn.functional.silu(x)
