"""Building blocks shared by the transformer, UMT5 and CLIP code.

Parameters keep the torch/diffusers names (`weight`, `bias`) so checkpoints load
without renaming. Every op here has a kernel on CPU, GPU and Ascend.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, mint, nn, ops
from mindspore.common.initializer import initializer

from .runtime import TILE_BROADCASTS


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


TILE_MIN_ELEMENTS = 1 << 16


def expand_to(y, shape):
    """`y` materialised at the broadcast `shape` (a no-op off CPU or when it already has it).

    MindSpore's CPU kernels for broadcasting binary ops are slow: at [1,1950,1536],
    x * w[1536] takes 24–54 ms eagerly and 15 ms under ms.jit, while tiling w and
    multiplying same-shape tensors takes 8 and 9 ms. The float ops are the same.
    """
    if not TILE_BROADCASTS or tuple(y.shape) == tuple(shape):
        return y
    size = 1
    for n in shape:
        size *= n
    if size < TILE_MIN_ELEMENTS:  # small tensors are launch-bound: an extra tile op would cost more
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


# Adding the bias with BiasAdd on the 2-D matmul output is ~40% cheaper in eager
# mode than a broadcast `+` at Wan sizes (1,950×8,960); results are identical.
bias_add = ops.BiasAdd()


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

    Uses the `ops.LayerNorm` primitive: mint's layer_norm has no CPU kernel.
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
        self._ones = ms.Tensor(ops.ones((dim,), ms.float32))
        self._zeros = ms.Tensor(ops.zeros((dim,), ms.float32))
        self.norm = ops.LayerNorm(-1, -1, eps)

    def construct(self, x):
        dtype = x.dtype
        if self.affine:
            w, b = self.weight.astype(ms.float32), self.bias.astype(ms.float32)
        else:
            w, b = self._ones, self._zeros
        return self.norm(x.astype(ms.float32), w, b)[0].astype(dtype)


class RMSNorm(nn.Cell):
    """torch.nn.RMSNorm semantics: fp32 statistic, cast back, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(param_init("ones", (dim,), dtype), name="weight")

    def construct(self, x):
        dtype = x.dtype
        xf = x.astype(ms.float32)
        y = bmul(xf, mint.rsqrt(mint.mean(xf * xf, -1, keepdim=True) + self.eps))
        return bmul(y.astype(dtype), self.weight)


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
