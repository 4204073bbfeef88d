"""The one convolution entry point of the Wan model code.

    from nodes.wan.conv import conv3d, conv2d
    y = conv3d(x, weight, bias, stride=(1, 1, 1), padding=(1, 1, 1))   # x [B,C,T,H,W]
    y = conv2d(x, weight, bias, stride=(2, 2), padding=0)               # x [B,C,H,W]

Semantics are torch's `F.conv3d` / `F.conv2d` with symmetric zero `padding`,
`groups=1`, `dilation=1`; weights are in torch layout (O, C, *kernel).

On Ascend/GPU the device kernels (`ops.conv3d` / `ops.conv2d`) are used. On CPU
the speed of MindSpore's kernels depends on the machine: oneDNN picks its
gemm-based convolution (`x64:gemm:jit`, ~30 GFLOP/s on 2 AVX2 cores) on some
CPUs and its reference kernel (~0.4 GFLOP/s, mindspore_cpu.md §3) on others.
A one-off probe (`native_conv_is_fast`, ~1 ms; override with GRAPHRT_CPU_CONV=
native|im2col) decides:

* fast native conv2d: a 3-D convolution becomes one `ops.conv2d` per output
  frame, the kt input frames of its window folded into the channels
  (C·kt channels: a free reshape of the [C, kt, H, W] window, weights reshaped
  to (O, C·kt, kh, kw)). On the Wan2.1 decode shapes this is 1.3–4x faster than
  our im2col below and 3–10x faster than `ops.conv3d` (also gemm-based there).
* reference-only kernels: an im2col followed by one matmul per slab. For
  spatial stride 1 the padded input is flattened so each kernel tap is a
  contiguous slice at a fixed offset; the column matrix is built for slabs of
  output positions so that it never exceeds `COL_BUDGET_BYTES`.

Zero padding is a `mint.cat` with zero blocks: `ops.pad` is ~10x slower on CPU.
"""
from __future__ import annotations

import os
import time

import mindspore as ms
from mindspore import mint, ops

from .runtime import device

# Largest im2col matrix materialised at once on the CPU path.
COL_BUDGET_BYTES = 256 * 1024 * 1024

# Opt-in (GRAPHRT_CONV_JIT=1): column slabs whose matmul reaches this many FLOPs run
# as a compiled graph (stack + matmul: 2–3x faster per call), but each conv shape
# compiles once (~1 s), which on a single Wan2.1 decode cancels the gain
# (308 s vs 296 s eager). Worth it only for repeated decodes of one size.
JIT_MIN_FLOPS = 2e9 if os.environ.get("GRAPHRT_CONV_JIT") == "1" else None

_matmul = ops.MatMul()
_SLAB_FNS = {}


def _slab_fn(offs, n):
    """Compiled im2col + matmul for one slab shape: tap views stacked then one matmul."""
    fn = _SLAB_FNS.get((offs, n))
    if fn is None:
        def slab(x, w):
            parts = []
            for o in offs:
                parts.append(x[:, o:o + n])
            return ops.matmul(w, ops.stack(parts, 0).reshape(len(offs) * x.shape[0], n))
        fn = _SLAB_FNS[(offs, n)] = ms.jit(slab)
    return fn


def _tuple(v, n):
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        raise ValueError(f"expected an int or {n} values, got {v}")
    return v


def _use_im2col() -> bool:
    return device() == "CPU"


# Native CPU conv2d counts as usable above this rate; the two oneDNN paths
# measured here differ by ~100x (0.4 vs 20-40 GFLOP/s), so any value between is safe.
NATIVE_MIN_GFLOPS = 3.0
_native_fast = None


def native_conv_is_fast() -> bool:
    """Whether MindSpore's CPU conv2d runs a real (gemm-based) kernel here: timed once per process."""
    global _native_fast
    if _native_fast is None:
        mode = os.environ.get("GRAPHRT_CPU_CONV", "").lower()
        if mode in ("native", "im2col"):
            _native_fast = mode == "native"
        else:
            x = mint.ones((1, 32, 34, 34), dtype=ms.float32)
            w = mint.ones((32, 32, 3, 3), dtype=ms.float32)
            ops.conv2d(x, w).asnumpy()  # first call builds the oneDNN primitive
            t0 = time.perf_counter()
            ops.conv2d(x, w).asnumpy()
            gflops = 2 * 32 * 32 * 9 * 32 * 32 / (time.perf_counter() - t0) / 1e9
            _native_fast = gflops >= NATIVE_MIN_GFLOPS
    return _native_fast


def _pad_dim(x, dim, before, after):
    if not before and not after:
        return x
    parts = []
    for n in (before, after):
        shape = list(x.shape)
        shape[dim] = n
        parts.append(mint.zeros(tuple(shape), dtype=x.dtype) if n else None)
    return mint.cat([p for p in (parts[0], x, parts[1]) if p is not None], dim=dim)


def _zero_pad(x, padding):
    """Symmetric zero padding of the trailing len(padding) dims."""
    first = x.ndim - len(padding)
    for i, p in enumerate(padding):
        x = _pad_dim(x, first + i, p, p)
    return x


def _frame_conv3d(x, weight, bias, stride, padding):
    """3-D convolution as one native conv2d per output frame, its kt-frame window folded into channels.

    A single window ([B, C, kt, H, W], the usual one-latent-frame decode step)
    is read as [B, C·kt, H, W] for free, matching the weight flattened to
    (O, C·kt, kh, kw). Several windows are cut from a frame-major copy
    [B, T, C, H, W] instead: each is then a contiguous block (slicing time in
    channel-major order costs one strided copy per window, ~2x more in total),
    and the weight is flattened frame-major to match.
    """
    x = _pad_dim(x, 2, padding[0], padding[0])
    b, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape
    tout = (t - kt) // stride[0] + 1
    if tout <= 0:
        raise ValueError(f"convolution input {tuple(x.shape)} is shorter than the kernel {tuple(weight.shape[2:])}")
    if tout == 1:
        win = x if t == kt else x[:, :, :kt]
        y = ops.conv2d(win.reshape(b, c * kt, h, w), weight.reshape(o, c * kt, kh, kw), bias,
                       stride[1:], "pad", padding[1:])
        return y.reshape(y.shape[:2] + (1,) + y.shape[2:])
    xt = x.swapaxes(1, 2).contiguous()
    w2 = weight.swapaxes(1, 2).reshape(o, kt * c, kh, kw)
    frames = []
    for i in range(tout):
        win = xt[:, i * stride[0]:i * stride[0] + kt].reshape(b, kt * c, h, w)
        frames.append(ops.conv2d(win, w2, bias, stride[1:], "pad", padding[1:]))
    return ops.stack(frames, 2)


def _pointwise(x, weight, bias, stride):
    """1×…×1 kernels: a channel matmul, no column matrix needed."""
    nd = weight.ndim - 2
    if any(s != 1 for s in stride):
        x = x[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)]
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    w = weight.reshape(weight.shape[0], c)
    if b == 1:
        y = _matmul(w, x.reshape(c, -1)).reshape((1, weight.shape[0]) + spatial)
    else:
        y = mint.matmul(w, x.reshape(b, c, -1)).reshape((b, weight.shape[0]) + spatial)
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * nd)
    return y


def _taps(kernel, plane, row):
    """Flat offsets of every kernel tap, in weight-flattening (row-major) order."""
    offs = [0]
    for k, step in zip(kernel, (plane, row, 1)[3 - len(kernel):]):
        offs = [o + i * step for o in offs for i in range(k)]
    return offs


def _flat_conv(x, wtap, kernel, out_sizes):
    """Stride-1 valid convolution of one padded sample x [C, *in] via flat-offset im2col.

    With the input flattened to [C, T·H·W], every kernel tap is one contiguous
    slice at a fixed offset, so the column matrix is a stack of cheap views.
    Outputs are computed on the padded grid (a few wasted columns per row) and
    cropped. Positions are processed in slabs to bound the column matrix.
    """
    c = x.shape[0]
    in_sizes = tuple(x.shape[1:])
    nd = len(in_sizes)
    if nd == 2:
        plane, row = 0, in_sizes[1]
    else:
        plane, row = in_sizes[1] * in_sizes[2], in_sizes[2]
    offs = _taps(kernel, plane, row)
    # Last valid output position + 1 on the padded grid.
    strides = (plane, row, 1)[3 - nd:]
    n = sum((o - 1) * s for o, s in zip(out_sizes, strides)) + 1
    xf = x.reshape(c, -1)
    per_col = c * len(offs) * 4
    step = max(1, COL_BUDGET_BYTES // per_col)
    span = offs[-1]
    use_jit = JIT_MIN_FLOPS is not None and 2 * wtap.shape[0] * wtap.shape[1] * min(n, step) >= JIT_MIN_FLOPS
    if use_jit:
        wtap = wtap.contiguous()
    parts = []
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        skip = 0
        if use_jit and n > step and n1 - n0 < step:
            # Equal slabs keep one compiled graph per conv shape: redo a few columns instead.
            skip, n0 = step - (n1 - n0), n1 - step
        if use_jit:
            y = _slab_fn(tuple(offs), n1 - n0)(xf[:, n0:n1 + span].contiguous(), wtap)  # views run 5x slower
        elif len(offs) == 1:
            y = _matmul(wtap, xf[:, n0 + offs[0]:n1 + offs[0]])
        else:
            y = _matmul(wtap, ops.stack([xf[:, n0 + o:n1 + o] for o in offs], 0).reshape(len(offs) * c, n1 - n0))
        parts.append(y[:, skip:] if skip else y)
    y = parts[0] if len(parts) == 1 else mint.cat(parts, dim=1)
    full = out_sizes[0]
    for s in in_sizes[1:]:
        full *= s
    if full > n:
        y = mint.cat([y, mint.zeros((y.shape[0], full - n), dtype=y.dtype)], dim=1)
    y = y.reshape((y.shape[0], out_sizes[0]) + in_sizes[1:])
    if nd == 3:
        return y[:, :, :out_sizes[1], :out_sizes[2]]
    return y[:, :, :out_sizes[1]]


def _im2col_strided(x, wtap, kernel, stride, out_sizes):
    """Spatially strided convolution (the encoder's stride-2 downsampling): strided-slice im2col."""
    b, c = x.shape[:2]
    nd = len(kernel)
    length = 1
    for o in out_sizes:
        length *= o
    idx_list = [()]
    for k in kernel:
        idx_list = [t + (i,) for t in idx_list for i in range(k)]
    per_col = b * c * len(idx_list) * 4
    taps = [x[(slice(None), slice(None)) + tuple(slice(i, i + s * (o - 1) + 1, s) for i, s, o in zip(idx, stride, out_sizes))]
            for idx in idx_list]
    if per_col * length > COL_BUDGET_BYTES and out_sizes[0] > 1:
        # Split along the leading output dim.
        step = max(1, COL_BUDGET_BYTES // (per_col * (length // out_sizes[0])))
        parts = []
        for o0 in range(0, out_sizes[0], step):
            o1 = min(out_sizes[0], o0 + step)
            xi = x[:, :, o0 * stride[0]:(o1 - 1) * stride[0] + kernel[0]]
            parts.append(_im2col_strided(xi, wtap, kernel, stride, [o1 - o0] + list(out_sizes[1:])))
        return mint.cat(parts, dim=2)
    cols = ops.stack([t.reshape(b, c, length) for t in taps], 1).reshape(b, len(idx_list) * c, length)
    y = mint.matmul(wtap, cols)
    return y.reshape((b, wtap.shape[0]) + tuple(out_sizes))


def _im2col_conv(x, weight, bias, stride):
    """Valid (already padded) convolution on CPU through im2col + one matmul per slab."""
    kernel = tuple(weight.shape[2:])
    nd = len(kernel)
    out_ch = weight.shape[0]
    in_sizes = x.shape[2:]
    out_sizes = [(n - k) // s + 1 for n, k, s in zip(in_sizes, kernel, stride)]
    if any(o <= 0 for o in out_sizes):
        raise ValueError(f"convolution input {tuple(x.shape)} is smaller than the kernel {kernel}")
    # Columns are stacked tap-major, so the weight is flattened as (O, taps, C).
    perm = (0,) + tuple(range(2, nd + 2)) + (1,)
    wtap = weight.permute(*perm).reshape(out_ch, -1)
    if all(s == 1 for s in stride[1:]):
        outs = []
        for i in range(x.shape[0]):
            if stride[0] == 1:
                outs.append(_flat_conv(x[i], wtap, kernel, out_sizes)[None])
            else:
                frames = [_flat_conv(x[i, :, t * stride[0]:t * stride[0] + kernel[0]], wtap, kernel,
                                     [1] + out_sizes[1:]) for t in range(out_sizes[0])]
                outs.append((frames[0] if len(frames) == 1 else mint.cat(frames, dim=1))[None])
        y = outs[0] if len(outs) == 1 else mint.cat(outs, dim=0)
    else:
        y = _im2col_strided(x, wtap, kernel, stride, out_sizes)
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * nd)
    return y


def _conv(x, weight, bias, stride, padding, nd):
    stride = _tuple(stride, nd)
    padding = _tuple(padding, nd)
    if x.ndim != nd + 2 or weight.ndim != nd + 2:
        raise ValueError(f"conv{nd}d expects {nd + 2}-D input and weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv{nd}d: input has {x.shape[1]} channels, weight expects {weight.shape[1]}")
    if all(k == 1 for k in weight.shape[2:]) and not any(padding):
        return _pointwise(x, weight, bias, stride)
    if _use_im2col():
        if native_conv_is_fast():
            if nd == 2:
                return ops.conv2d(x, weight, bias, stride, "pad", padding)
            return _frame_conv3d(x, weight, bias, stride, padding)
        return _im2col_conv(_zero_pad(x, padding), weight, bias, stride)
    x = _zero_pad(x, padding)
    fn = ops.conv3d if nd == 3 else ops.conv2d
    return fn(x, weight, bias, stride=stride, pad_mode="valid")


def conv3d(x, weight, bias=None, stride=1, padding=0):
    """torch `F.conv3d(x, weight, bias, stride, padding)` for x [B,C,T,H,W], weight [O,C,kt,kh,kw]."""
    return _conv(x, weight, bias, stride, padding, 3)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """torch `F.conv2d(x, weight, bias, stride, padding)` for x [B,C,H,W], weight [O,C,kh,kw]."""
    return _conv(x, weight, bias, stride, padding, 2)


__all__ = ["conv3d", "conv2d", "native_conv_is_fast", "COL_BUDGET_BYTES", "JIT_MIN_FLOPS"]
