"""The one convolution entry point of the Wan model code.

    from nodes.wan.backend.conv import conv3d, conv2d
    y = conv3d(x, weight, bias, stride=(1, 1, 1), padding=(1, 1, 1))   # x [B,C,T,H,W]
    y = conv2d(x, weight, bias, stride=(2, 2), padding=0)               # x [B,C,H,W]

Semantics are torch's `F.conv3d` / `F.conv2d` with zero `padding`, `groups=1`,
`dilation=1`; weights are in torch layout (O, C, *kernel). Beyond torch, a
padding entry may be a (before, after) pair and conv3d takes a `prefix` of
frames that precede x in time (a causal conv's cache).

On Ascend/GPU the device kernels (`ops.conv3d` / `ops.conv2d`) are used. On CPU
`cpu_strategy()` picks one of three ways, once per process (GRAPHRT_CPU_CONV
forces one):

* "onednn" (whenever MindSpore's bundled oneDNN loads, see onednn.py): the
  library's direct blocked-layout kernels, the ones torch runs, 2-D and 3-D,
  with padding and the prefix handled inside; 105–150 GFLOP/s on the Wan2.1
  decoder's convs on 2 AVX2 cores. MindSpore's own CPU Conv2D reaches oneDNN
  with plain NCHW descriptors and gets its gemm kernel (`x64:gemm:jit`,
  55–80 GFLOP/s) or, on some CPUs, its reference kernel (~0.4 GFLOP/s,
  mindspore_cpu.md §3).
* "native": MindSpore's conv2d, chosen when a one-off probe (~70 ms) finds it
  fast. A 3-D convolution is one conv2d over its output frames, each frame's
  kt-frame input window folded into the channels (C·kt channels; a free reshape
  for a single window, otherwise windows stacked into the batch dim, at most
  `WINDOW_BUDGET_BYTES` per call). Stride-1 convs with at most
  `TAP_SUM_MAX_OUT` output channels (the decoder's conv_out) run as one
  well-shaped matmul plus shifted adds (`_tap_sum_conv3d`): a 3-row gemm runs
  at ~1 GFLOP/s.
* "im2col": reference kernels only. For spatial stride 1 the padded input is
  flattened so each kernel tap is a contiguous slice at a fixed offset; slabs of
  output positions keep the column matrix under `COL_BUDGET_BYTES`.

`upsample_conv2d` fuses nearest ×2 upsampling into the following 3×3 conv.
Zero padding is a `mint.cat` with zero blocks: `ops.pad` is ~10x slower on CPU.
Tried on CPU and dropped (measured, not faster): compiling each native conv
with ms.jit (~1 s per shape, +30 s per decode, warm decodes no faster),
spatial row bands, channels-last im2col with per-tap accumulated matmuls
(MindSpore copies run at ~1 GB/s and matmuls on strided views ~3x slower),
Winograd F(2x2,3x3) on MindSpore ops (its strided input transform alone took
longer than the whole native conv).
"""
from __future__ import annotations

import math
import os
import time

import mindspore as ms
from mindspore import mint, ops

from . import onednn
from .runtime import device

# Largest im2col matrix materialised at once on the CPU path.
COL_BUDGET_BYTES = 256 * 1024 * 1024
# Largest stack of frame windows fed to one native conv2d (a Wan2.1 decode at
# 256x256 needs 300 MB for its 4 windows of 96 channels; bigger inputs split).
WINDOW_BUDGET_BYTES = 512 * 1024 * 1024

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


# Native CPU conv2d counts as usable above this rate on the probe's small problem:
# the gemm kernel gives 12-18 GFLOP/s there (2 AVX2 cores), the reference one ~0.4.
NATIVE_MIN_GFLOPS = 3.0
CPU_STRATEGIES = ("onednn", "native", "im2col")
_strategy = None


def _native_conv_is_fast() -> bool:
    x = mint.ones((1, 32, 34, 34), dtype=ms.float32)
    w = mint.ones((32, 32, 3, 3), dtype=ms.float32)
    ops.conv2d(x, w).asnumpy()  # first call builds the oneDNN primitive
    t0 = time.perf_counter()
    ops.conv2d(x, w).asnumpy()
    gflops = 2 * 32 * 32 * 9 * 32 * 32 / (time.perf_counter() - t0) / 1e9
    return gflops >= NATIVE_MIN_GFLOPS


def cpu_strategy() -> str:
    """How float32 convolutions run on CPU here: "onednn", "native" or "im2col" (decided once per process).

    GRAPHRT_CPU_CONV forces one. Otherwise the blocked oneDNN kernels when
    MindSpore's oneDNN can be loaded, else MindSpore's conv2d if a one-off probe
    (~70 ms) finds it fast, else im2col.
    """
    global _strategy
    if _strategy is None:
        mode = os.environ.get("GRAPHRT_CPU_CONV", "").lower()
        if mode and mode not in CPU_STRATEGIES:
            raise ValueError(f"GRAPHRT_CPU_CONV={mode!r}: expected one of {', '.join(CPU_STRATEGIES)}")
        if mode == "onednn" and not onednn.available():
            raise RuntimeError(f"GRAPHRT_CPU_CONV=onednn but {onednn.unavailable_reason()}")
        if mode:
            _strategy = mode
        elif onednn.available():
            _strategy = "onednn"
        else:
            _strategy = _fallback_strategy()
    return _strategy


def _cpu_path(x, weight, bias) -> str:
    strategy = cpu_strategy()
    if strategy == "onednn" and any(t is not None and t.dtype != ms.float32 for t in (x, weight, bias)):
        return _fallback_strategy()  # the oneDNN path is float32-only
    return strategy


_fallback = None


def _fallback_strategy() -> str:
    global _fallback
    if _fallback is None:
        _fallback = "native" if _native_conv_is_fast() else "im2col"
    return _fallback


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


def _native_conv2d(x, weight, bias, stride, padding):
    # Eager on purpose: compiling each conv shape with ms.jit (~1 s each, ~30 s per
    # Wan2.1 decode) bought nothing measurable on the warm second decode either.
    return ops.conv2d(x, weight, bias, tuple(stride), "pad", tuple(padding))


def _frame_conv3d(x, weight, bias, stride, padding):
    """3-D convolution as a native conv2d over output frames, each one's kt-frame window folded into channels.

    A window x[:, :, t0:t0+kt] is [B, C, kt, H, W]; read as [B, C·kt, H, W] its
    channel c·kt+dt is frame dt of channel c, the order of the weight flattened
    to (O, C·kt, kh, kw). One window (the usual one-latent-frame decode step) is
    a free reshape; several are stacked into the batch dim of a single conv2d,
    which measured 10–20% faster than one call per window.
    """
    x = _pad_dim(x, 2, padding[0], padding[0])
    b, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape
    tout = (t - kt) // stride[0] + 1
    if tout <= 0:
        raise ValueError(f"convolution input {tuple(x.shape)} is shorter than the kernel {tuple(weight.shape[2:])}")
    w2 = weight.reshape(o, c * kt, kh, kw)
    if tout == 1:
        win = x if t == kt else x[:, :, :kt]
        y = _native_conv2d(win.reshape(b, c * kt, h, w), w2, bias, stride[1:], padding[1:])
        return y.reshape((b, o, 1) + y.shape[2:])
    # Stacked windows repeat every frame kt/stride times: bound them like im2col columns.
    per_win = b * c * kt * h * w * 4
    group = max(1, WINDOW_BUDGET_BYTES // per_win)
    outs = []
    for i0 in range(0, tout, group):
        n = min(group, tout - i0)
        wins = ops.stack([x[:, :, i * stride[0]:i * stride[0] + kt] for i in range(i0, i0 + n)], 1)
        y = _native_conv2d(wins.reshape(b * n, c * kt, h, w), w2, bias, stride[1:], padding[1:])
        outs.append(y.reshape((b, n) + y.shape[1:]))
    y = outs[0] if len(outs) == 1 else mint.cat(outs, dim=1)
    return y.swapaxes(1, 2)


# Output channels up to which a stride-1 conv is computed tap-sum style (below), and the
# input size from which it pays: on small inputs its ~30 extra ops cost more than they save
# (a toy VAE decode took 1.6 s with it, most of it launching shifted adds).
TAP_SUM_MAX_OUT = 16
TAP_SUM_MIN_ELEMENTS = 1 << 20


def _tap_sum_conv3d(x, weight, bias, padding):
    """Stride-1 conv with few output channels (the decoder's conv_out, O=3): matmul first, shift-add after.

    oneDNN's gemm convolution with O=3 runs at ~1 GFLOP/s (a 3-row gemm). Here one
    matmul maps the C input channels to O·taps partial outputs per pixel (a
    well-shaped gemm), then each tap's O rows, shifted by the tap's flat offset
    on the padded grid, are summed: the shifts touch only O·taps rows, not C·taps.
    """
    x = _zero_pad(x, padding)
    b, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape
    out_t, out_h, out_w = t - kt + 1, h - kh + 1, w - kw + 1
    plane = h * w
    offs = _taps((kt, kh, kw), plane, w)
    n = (out_t - 1) * plane + (out_h - 1) * w + out_w
    # Rows tap-major: row tap·O + o holds weight[o, :, tap].
    wt = weight.reshape(o, c, -1).permute(2, 0, 1).reshape(-1, c)
    outs = []
    for i in range(b):
        z = _matmul(wt, x[i].reshape(c, -1))
        y = None
        for k, off in enumerate(offs):
            part = z[k * o:(k + 1) * o, off:off + n]
            y = part if y is None else y + part
        y = mint.cat([y, mint.zeros((o, out_t * plane - n), dtype=y.dtype)], dim=1)
        outs.append(y.reshape(o, out_t, h, w)[:, :, :out_h, :out_w])
    y = outs[0][None] if b == 1 else ops.stack(outs, 0)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1, 1)
    return y


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


def _pairs(padding, nd):
    """Per-dim (before, after) padding from an int, per-dim ints, or per-dim (before, after) pairs."""
    if isinstance(padding, int):
        return ((padding, padding),) * nd
    padding = tuple(padding)
    if len(padding) != nd:
        raise ValueError(f"expected an int or {nd} paddings, got {padding}")
    return tuple((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding)


def _tap_sum_fits(x, weight, stride, nd):
    return (nd == 3 and weight.shape[0] <= TAP_SUM_MAX_OUT and all(st == 1 for st in stride)
            and math.prod(x.shape[1:]) >= TAP_SUM_MIN_ELEMENTS)


def _conv(x, weight, bias, stride, padding, nd, prefix=None):
    stride = _tuple(stride, nd)
    pads = _pairs(padding, nd)
    if x.ndim != nd + 2 or weight.ndim != nd + 2:
        raise ValueError(f"conv{nd}d expects {nd + 2}-D input and weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv{nd}d: input has {x.shape[1]} channels, weight expects {weight.shape[1]}")
    pointwise = all(k == 1 for k in weight.shape[2:]) and not any(a or b for a, b in pads) and prefix is None
    if not pointwise and _use_im2col() and _cpu_path(x, weight, bias) == "onednn":
        return onednn.conv(x, weight, bias, stride, pads, prefix=prefix)
    if prefix is not None:
        x = mint.cat([prefix.astype(x.dtype), x], dim=2)
    # The paths below take symmetric padding: pad the rest explicitly.
    for i, (a, b) in enumerate(pads):
        if a != b:
            x = _pad_dim(x, 2 + i, a - min(a, b), b - min(a, b))
    padding = tuple(min(a, b) for a, b in pads)
    if pointwise:
        return _pointwise(x, weight, bias, stride)
    if _use_im2col():
        if _tap_sum_fits(x, weight, stride, nd):
            return _tap_sum_conv3d(x, weight, bias, padding)
        if _cpu_path(x, weight, bias) == "native":
            if nd == 2:
                return _native_conv2d(x, weight, bias, stride, padding)
            return _frame_conv3d(x, weight, bias, stride, padding)
        return _im2col_conv(_zero_pad(x, padding), weight, bias, stride)
    x = _zero_pad(x, padding)
    fn = ops.conv3d if nd == 3 else ops.conv2d
    return fn(x, weight, bias, stride=stride, pad_mode="valid")


def _phase_kernels(weight):
    """The four 2×2 kernels of a 3×3 kernel applied to a nearest-×2 upsampled image, one per output parity.

    Output row 2i+a reads upsampled rows 2i+a-1..2i+a+1, i.e. source rows
    (i-1, i, i) for a=0 and (i, i, i+1) for a=1: kernel rows 1 and 2 (a=0) or
    0 and 1 (a=1) hit the same source row and merge. Same for columns.
    """
    def merge(w, axis):
        first, mid, last = (w[:, :, i:i + 1] if axis == 2 else w[:, :, :, i:i + 1] for i in range(3))
        return mint.cat([first, mid + last], dim=axis), mint.cat([first + mid, last], dim=axis)

    rows = merge(weight, 2)
    return [merge(r, 3) for r in rows]  # [a][b]: (O, C, 2, 2)


def upsample_conv2d(x, weight, bias=None):
    """conv2d(nearest ×2 upsample of x, 3×3 weight, bias, padding 1), per frame for x [B,C,T,H,W].

    On CPU this never builds the upsampled image: each output parity (a, b) is a
    2×2 convolution of the zero-padded source (`_phase_kernels`), so the conv
    does 16 instead of 36 multiply-adds per source pixel and channel pair, then
    the four phase images are interleaved (with oneDNN, each phase is written
    straight to its strided place in the output). Elsewhere: interpolate, then conv.
    """
    if _use_im2col() and _cpu_path(x, weight, bias) == "onednn":
        return onednn.upsample_conv2d(x, _phase_kernels(weight), bias)
    five = x.ndim == 5
    if five:
        b, c, t, h, w = x.shape
        frames = x.swapaxes(1, 2).reshape(b * t, c, h, w)
    else:
        frames = x
        b, c, h, w = x.shape
    if not _use_im2col():
        # Nearest upsampling in fp32: CPU and some devices lack bf16 kernels for it.
        up = mint.nn.functional.interpolate(frames.astype(ms.float32), scale_factor=2.0, mode="nearest")
        y = conv2d(up.astype(x.dtype), weight, bias, 1, 1)
    else:
        xp = _zero_pad(frames, (1, 1))
        n, o = frames.shape[0], weight.shape[0]
        rows = []
        for a, row in enumerate(_phase_kernels(weight)):
            cols = []
            for bb, k in enumerate(row):
                cols.append(conv2d(xp, k, bias)[:, :, a:a + h, bb:bb + w])
            rows.append(ops.stack(cols, -1).reshape(n, o, h, 2 * w))
        y = ops.stack(rows, 3).reshape(n, o, 2 * h, 2 * w)
    if five:
        return y.reshape(b, t, y.shape[1], 2 * h, 2 * w).swapaxes(1, 2)
    return y


def conv3d(x, weight, bias=None, stride=1, padding=0, prefix=None):
    """torch `F.conv3d(x, weight, bias, stride, padding)` for x [B,C,T,H,W], weight [O,C,kt,kh,kw].

    Beyond torch: a padding entry may be a (before, after) pair, and `prefix`
    (frames that precede x in time, e.g. a causal cache) is convolved as
    cat([prefix, x], 2) without building the concatenation where the path allows.
    """
    return _conv(x, weight, bias, stride, padding, 3, prefix)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """torch `F.conv2d(x, weight, bias, stride, padding)` for x [B,C,H,W], weight [O,C,kh,kw]; padding may be pairs."""
    return _conv(x, weight, bias, stride, padding, 2)


__all__ = ["conv3d", "conv2d", "upsample_conv2d", "cpu_strategy", "CPU_STRATEGIES", "COL_BUDGET_BYTES", "WINDOW_BUDGET_BYTES", "JIT_MIN_FLOPS"]
