"""Convolutions (in oneDNN's blocked layout) and matmuls on CPU through the oneDNN library bundled with MindSpore.

MindSpore's CPU Conv2D hands oneDNN plain NCHW descriptors, so oneDNN runs its
gemm-based kernel (`x64:gemm:jit`, 55–70 GFLOP/s on 2 AVX2 cores), and there is
no CPU Conv3D worth using. Asking the same library for a convolution with
"any" layouts gets its direct blocked kernel (`jit:avx2`, what torch runs):
inputs are reordered to nChw8c / nCdhw8c, convolved, and reordered back.

MindSpore's oneDNN is built for a caller-supplied thread pool, which ctypes
cannot provide, so each primitive runs on one thread. The work is split in
`threads()` parts (batch items, else output-channel slices sharing one
reordered input) run from a Python thread pool; ctypes releases the GIL.
Measured on the Wan2.1 decoder's largest conv (96→96 ch, 3×3×3, 256², 4 frames):
117–149 GFLOP/s against 54–63 for MindSpore's conv2d with frames folded.

Only float32 tensors in PyNative mode on CPU come here; `available()` is False
when the library, its version (3.x) or a symbol is missing, and callers fall
back to MindSpore's own kernels.
"""
from __future__ import annotations

import collections
import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import mindspore as ms
from mindspore import mint

_P = ctypes.c_void_p
_Dims = ctypes.c_int64 * 12

# Enum values of oneDNN 3.x (dnnl_types.h / dnnl_common_types.h).
_CPU_ENGINE = 1
_F32 = 3
_TAG_ANY = 1
_TAG_PLAIN = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6}  # ndims -> dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd, dnnl_abcde
_FORWARD_INFERENCE = 96
_CONVOLUTION_DIRECT = 1
_ELTWISE = {"gelu_tanh": 0x2b}  # dnnl_alg_kind_t
_QUERY_SRC_MD, _QUERY_WEIGHTS_MD, _QUERY_DST_MD = 129, 131, 133
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_BIAS = 1, 17, 33, 41
_STREAM_IN_ORDER = 1


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _P)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class OneDNNError(RuntimeError):
    pass


_SIGNATURES = {
    "dnnl_version": ([], ctypes.POINTER(_Version)),
    "dnnl_engine_create": ([ctypes.POINTER(_P), ctypes.c_int, ctypes.c_size_t], ctypes.c_int),
    "dnnl_stream_create": ([ctypes.POINTER(_P), _P, ctypes.c_uint], ctypes.c_int),
    "dnnl_stream_wait": ([_P], ctypes.c_int),
    "dnnl_memory_desc_create_with_tag": ([ctypes.POINTER(_P), ctypes.c_int, _Dims, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "dnnl_memory_desc_create_with_strides": ([ctypes.POINTER(_P), ctypes.c_int, _Dims, ctypes.c_int, _Dims], ctypes.c_int),
    "dnnl_memory_desc_create_submemory": ([ctypes.POINTER(_P), _P, _Dims, _Dims], ctypes.c_int),
    "dnnl_memory_desc_destroy": ([_P], ctypes.c_int),
    "dnnl_memory_desc_equal": ([_P, _P], ctypes.c_int),
    "dnnl_memory_desc_get_size": ([_P], ctypes.c_size_t),
    "dnnl_convolution_forward_primitive_desc_create": (
        [ctypes.POINTER(_P), _P, ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, _Dims, _Dims, _Dims, _Dims, _P], ctypes.c_int),
    "dnnl_eltwise_forward_primitive_desc_create": (
        [ctypes.POINTER(_P), _P, ctypes.c_int, ctypes.c_int, _P, _P, ctypes.c_float, ctypes.c_float, _P], ctypes.c_int),
    "dnnl_reorder_primitive_desc_create": ([ctypes.POINTER(_P), _P, _P, _P, _P, _P], ctypes.c_int),
    "dnnl_primitive_desc_query_md": ([_P, ctypes.c_int, ctypes.c_int], _P),
    "dnnl_primitive_desc_destroy": ([_P], ctypes.c_int),
    "dnnl_primitive_create": ([ctypes.POINTER(_P), _P], ctypes.c_int),
    "dnnl_primitive_destroy": ([_P], ctypes.c_int),
    "dnnl_primitive_execute": ([_P, _P, ctypes.c_int, ctypes.POINTER(_Arg)], ctypes.c_int),
    "dnnl_memory_create": ([ctypes.POINTER(_P), _P, _P, _P], ctypes.c_int),
    "dnnl_memory_destroy": ([_P], ctypes.c_int),
    "dnnl_sgemm": ([ctypes.c_char, ctypes.c_char, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, _P,
                    ctypes.c_int64, _P, ctypes.c_int64, ctypes.c_float, _P, ctypes.c_int64], ctypes.c_int),
}

_lib = None
_engine = None
_load_error = None
_local = threading.local()
_pool = None
_lock = threading.RLock()


def _find_library():
    lib_dir = os.path.join(os.path.dirname(ms.__file__), "lib")
    found = sorted(glob.glob(os.path.join(lib_dir, "libdnnl.so*")))
    if not found:
        raise OneDNNError(f"no libdnnl.so in {lib_dir}")
    return found[0]


def _load():
    global _lib, _engine, _load_error
    if _lib is not None or _load_error is not None:
        return _lib
    with _lock:
        if _lib is not None or _load_error is not None:
            return _lib
        try:
            lib = ctypes.CDLL(_find_library())
            for name, (args, res) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            version = lib.dnnl_version().contents
            if version.major != 3:
                raise OneDNNError(f"oneDNN {version.major}.{version.minor} (the enum values here are 3.x's)")
            engine = _P()
            _check(lib.dnnl_engine_create(ctypes.byref(engine), _CPU_ENGINE, 0), "engine_create")
            _lib, _engine = lib, engine
        except (OSError, AttributeError, OneDNNError) as e:
            _load_error = f"{type(e).__name__}: {e}"
    return _lib


def _check(status, what):
    if status != 0:
        raise OneDNNError(f"oneDNN {what} failed (dnnl_status_t {status})")


def threads() -> int:
    """Parts a convolution or feed-forward is split into: GRAPHRT_CPU_CONV_THREADS, else the CPUs this process may use."""
    env = os.environ.get("GRAPHRT_CPU_CONV_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def available() -> bool:
    """Whether MindSpore's bundled oneDNN 3.x could be loaded (why not: `unavailable_reason()`)."""
    return _load() is not None


def unavailable_reason():
    _load()
    return _load_error


def _stream():
    s = getattr(_local, "stream", None)
    if s is None:
        s = _P()
        _check(_lib.dnnl_stream_create(ctypes.byref(s), _engine, _STREAM_IN_ORDER), "stream_create")
        _local.stream = s
    return s


_pool_pid = None


def _executor(n):
    global _pool, _pool_pid
    with _lock:
        # A forked child inherits the pool object but not its threads: it gets a new pool.
        if _pool is None or _pool._max_workers < n or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="graphrt-onednn")
            _pool_pid = os.getpid()
        return _pool


class _Desc:
    """A memory descriptor we own (destroyed with us): a layout tag, or explicit element strides."""

    def __init__(self, shape, tag=None, strides=None):
        self.handle = _P()
        if strides is None:
            status = _lib.dnnl_memory_desc_create_with_tag(ctypes.byref(self.handle), len(shape), _Dims(*shape), _F32, tag)
        else:
            status = _lib.dnnl_memory_desc_create_with_strides(ctypes.byref(self.handle), len(shape), _Dims(*shape),
                                                               _F32, _Dims(*strides))
        _check(status, f"memory_desc_create{tuple(shape)}")

    def __del__(self):
        if _lib is not None and self.handle:
            _lib.dnnl_memory_desc_destroy(self.handle)


def _plain(shape, strides=None):
    return _Desc(shape, _TAG_PLAIN[len(shape)]) if strides is None else _Desc(shape, strides=strides)


def _any(shape):
    return _Desc(shape, _TAG_ANY)


class _Primitive:
    """A primitive and its descriptor; `md(query)` reads a layout the descriptor chose."""

    def __init__(self, create):
        self.pd = _P()
        create(ctypes.byref(self.pd))
        self.prim = _P()
        _check(_lib.dnnl_primitive_create(ctypes.byref(self.prim), self.pd), "primitive_create")

    def md(self, query):
        return _lib.dnnl_primitive_desc_query_md(self.pd, query, 0)

    def __call__(self, args):
        arr = (_Arg * len(args))(*[_Arg(k, m) for k, m in args])
        _check(_lib.dnnl_primitive_execute(self.prim, _stream(), len(args), arr), "primitive_execute")

    def __del__(self):
        if _lib is not None:
            if self.prim:
                _lib.dnnl_primitive_destroy(self.prim)
            if self.pd:
                _lib.dnnl_primitive_desc_destroy(self.pd)


def _reorder(src_md, dst_md):
    if _lib.dnnl_memory_desc_equal(src_md, dst_md):
        return None
    return _Primitive(lambda pd: _check(_lib.dnnl_reorder_primitive_desc_create(pd, src_md, _engine, dst_md, _engine, None),
                                        "reorder_primitive_desc_create"))


class _Memory:
    """A oneDNN memory object over a numpy buffer (allocated here when none is given)."""

    def __init__(self, md, array=None, byte_offset=0):
        if array is None:
            array = np.empty(_lib.dnnl_memory_desc_get_size(md) // 4, np.float32)
        self.array = array  # keeps the buffer alive as long as the memory object
        self.handle = _P()
        _check(_lib.dnnl_memory_create(ctypes.byref(self.handle), md, _engine, _P(array.ctypes.data + byte_offset)),
               "memory_create")

    def __del__(self):
        if _lib is not None and self.handle:
            _lib.dnnl_memory_destroy(self.handle)


class _SubDesc:
    """A sub-block (dims at offsets) of a parent memory descriptor; memories over it take the parent's buffer."""

    def __init__(self, parent, dims, offsets):
        self.handle = _P()
        _check(_lib.dnnl_memory_desc_create_submemory(ctypes.byref(self.handle), parent, _Dims(*dims), _Dims(*offsets)),
               f"memory_desc_create_submemory{tuple(dims)}@{tuple(offsets)}")

    def __del__(self):
        if _lib is not None and self.handle:
            _lib.dnnl_memory_desc_destroy(self.handle)


class _ConvPart:
    """One oneDNN convolution over a batch slice or an output-channel slice, with its weight and output reorders."""

    def __init__(self, x_shape, w_shape, y_shape, stride, pad_l, pad_r, bias, y_strides=None):
        nd = len(x_shape) - 2
        self.w_plain, self.dst_plain = _plain(w_shape), _plain(y_shape, y_strides)
        self.b_plain = _plain((w_shape[0],)) if bias else None
        src_any, w_any, dst_any = _any(x_shape), _any(w_shape), _any(y_shape)
        self.conv = _Primitive(lambda pd: _check(_lib.dnnl_convolution_forward_primitive_desc_create(
            pd, _engine, _FORWARD_INFERENCE, _CONVOLUTION_DIRECT, src_any.handle, w_any.handle,
            self.b_plain.handle if bias else None, dst_any.handle, _Dims(*stride), _Dims(*([0] * nd)),
            _Dims(*pad_l), _Dims(*pad_r), None), f"convolution {tuple(x_shape)} * {tuple(w_shape)}"))
        self.src_md = self.conv.md(_QUERY_SRC_MD)
        self.w_md = self.conv.md(_QUERY_WEIGHTS_MD)
        self.dst_md = self.conv.md(_QUERY_DST_MD)
        self.w_reorder = _reorder(self.w_plain.handle, self.w_md)
        self.dst_reorder = _reorder(self.dst_md, self.dst_plain.handle)

    def run(self, src, w, w_offset, b, b_offset, y, y_offset):
        """src: a memory in this part's src layout; w, b, y: plain numpy buffers with byte offsets."""
        wm = _Memory(self.w_plain.handle, w, w_offset)
        if self.w_reorder is not None:
            blocked = _Memory(self.w_md)
            self.w_reorder([(_ARG_SRC, wm.handle), (_ARG_DST, blocked.handle)])
            wm = blocked
        ym = _Memory(self.dst_plain.handle, y, y_offset)
        out = ym if self.dst_reorder is None else _Memory(self.dst_md)
        args = [(_ARG_SRC, src.handle), (_ARG_WEIGHTS, wm.handle), (_ARG_DST, out.handle)]
        if b is not None:
            bm = _Memory(self.b_plain.handle, b, b_offset)
            args.append((_ARG_BIAS, bm.handle))
        self.conv(args)
        if self.dst_reorder is not None:
            self.dst_reorder([(_ARG_SRC, out.handle), (_ARG_DST, ym.handle)])
        _check(_lib.dnnl_stream_wait(_stream()), "stream_wait")


class _SrcCopy:
    """Reorder of one sub-block of a plain input piece into a sub-block of a convolution's (blocked) source."""

    def __init__(self, piece, piece_md, dst_md, dims, src_offsets, dst_offsets):
        self.piece = piece
        self.src = _SubDesc(piece_md, dims, src_offsets)
        self.dst = _SubDesc(dst_md, dims, dst_offsets)
        self.reorder = _Primitive(lambda pd: _check(_lib.dnnl_reorder_primitive_desc_create(
            pd, self.src.handle, _engine, self.dst.handle, _engine, None), f"reorder of input block {tuple(dims)}"))

    def __call__(self, pieces, buffer):
        src, dst = _Memory(self.src.handle, pieces[self.piece]), _Memory(self.dst.handle, buffer)
        self.reorder([(_ARG_SRC, src.handle), (_ARG_DST, dst.handle)])
        _check(_lib.dnnl_stream_wait(_stream()), "stream_wait")


def _split(n, parts):
    step, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + step + (1 if i < extra else 0)
        if end > start:
            bounds.append((start, end))
        start = end
    return bounds


def _channel_chunks(c, parts):
    """Channel ranges for parallel reorders: multiples of 8 (the blocked layout's channel block)."""
    if c < 16 or c % 8 or parts == 1:
        return [(0, c)]
    return [(a * 8, b * 8) for a, b in _split(c // 8, min(parts, c // 8))]


def _dense_strides(shape):
    strides = [1]
    for d in reversed(shape[1:]):
        strides.insert(0, strides[0] * d)
    return strides


def _run_all(jobs):
    if len(jobs) == 1:
        jobs[0]()
    else:
        for f in [_executor(len(jobs)).submit(j) for j in jobs]:
            f.result()


class _ConvPlan:
    """Primitives for one problem, split into parallel parts over batch items, output channels or output rows.

    Several batch items: one part per group of items. One item: output-channel
    slices (multiples of 8, the blocked layout's channel block) sharing one
    reordered input, or, with fewer than 16 output channels, bands of output rows
    each reading its rows of the input. The input is `pieces` (frame counts along
    dim 2, e.g. a causal cache then the new frames) that the reorders into
    oneDNN's layout concatenate, so no concatenated copy is made first; those
    reorders also run in parallel, over pieces and channel blocks. Input and output
    may be strided views (`x_strides`, `y_strides`, in elements) of larger arrays,
    e.g. the frames of a [C,T,H,W] video read as a batch, or one parity phase of an
    upsampled image.
    """

    def __init__(self, x_shape, w_shape, stride, pad_l, pad_r, bias, parts, x_strides=None, y_strides=None,
                 pieces=None):
        n, c, o = x_shape[0], x_shape[1], w_shape[0]
        spatial = [(s + a + b - k) // st + 1 for s, k, st, a, b in zip(x_shape[2:], w_shape[2:], stride, pad_l, pad_r)]
        if any(s <= 0 for s in spatial):
            raise ValueError(f"convolution input {tuple(x_shape)} is smaller than the kernel {tuple(w_shape[2:])}")
        self.y_shape = (n, o) + tuple(spatial)
        pieces = tuple(pieces or (x_shape[2],))
        if x_strides is not None and len(pieces) > 1:
            raise ValueError("a strided input is a single piece")
        y_strides = tuple(y_strides or _dense_strides(self.y_shape))
        x_strides_ = tuple(x_strides or _dense_strides(x_shape))
        row = len(x_shape) - 2  # the dim output-row bands split (H)
        if n > 1:
            self.mode = "batch"
        elif o >= 16:
            self.mode = "channels"
        else:
            self.mode = "rows"
        # Each part: x/w/y shapes, its pads, byte offsets into w, b, y, and the input block it reads.
        specs = []
        if self.mode == "batch":
            for a, b in _split(n, min(parts, n)):
                specs.append(((b - a,) + tuple(x_shape[1:]), tuple(w_shape), (b - a,) + self.y_shape[1:], pad_l, pad_r,
                              0, 0, a * y_strides[0] * 4, (a, 0)))
        elif self.mode == "channels":
            bounds = [(a * 8, b * 8) for a, b in _split(o // 8, min(parts, o // 8))]
            bounds[-1] = (bounds[-1][0], o)
            for a, b in bounds:
                specs.append((tuple(x_shape), (b - a,) + tuple(w_shape[1:]), (n, b - a) + self.y_shape[2:], pad_l, pad_r,
                              a * int(np.prod(w_shape[1:])) * 4, a * 4, a * y_strides[1] * 4, (0, 0)))
        else:
            k, st, size = w_shape[row], stride[row - 2], x_shape[row]
            for r0, r1 in _split(spatial[row - 2], min(parts, spatial[row - 2])):
                start, end = r0 * st - pad_l[row - 2], (r1 - 1) * st + k - pad_l[row - 2]
                lo, hi = max(start, 0), min(end, size)
                pl = tuple(lo - start if d == row - 2 else p for d, p in enumerate(pad_l))
                pr = tuple(end - hi if d == row - 2 else p for d, p in enumerate(pad_r))
                xs = tuple(x_shape[:row]) + (hi - lo,) + tuple(x_shape[row + 1:])
                ys = self.y_shape[:row] + (r1 - r0,) + self.y_shape[row + 1:]
                specs.append((xs, tuple(w_shape), ys, pl, pr, 0, 0, r0 * y_strides[row] * 4, (0, lo)))
        self.parts = [_ConvPart(xs, ws, ys, stride, pl, pr, bias, y_strides) for xs, ws, ys, pl, pr, *_ in specs]
        self.offsets = [spec[5:8] for spec in specs]

        # Where each part's source comes from: pieces in their plain layout, reordered block by block.
        rest = tuple(x_shape[3:])
        self.piece_mds = [_plain((n, c, t) + rest, x_strides) for t in pieces]
        if self.mode == "channels" and all(_lib.dnnl_memory_desc_equal(p.src_md, self.parts[0].src_md)
                                           for p in self.parts):
            groups = [0]  # one reordered input shared by every channel slice
        else:
            groups = list(range(len(self.parts)))
        self.sources = []  # (part index, block copies, or None with the byte offset of a plain input used as is)
        for part in groups:
            xs, (a, lo) = specs[part][0], specs[part][8]
            md = self.parts[part].src_md
            if len(pieces) == 1 and _lib.dnnl_memory_desc_equal(_plain(xs, x_strides).handle, md):
                self.sources.append((part, None, (a * x_strides_[0] + lo * x_strides_[row]) * 4))
                continue
            copies, f0 = [], 0
            for k, t in enumerate(pieces):
                for c0, c1 in _channel_chunks(c, parts):
                    dims = (xs[0], c1 - c0, t if len(pieces) > 1 else xs[2]) + tuple(xs[3:])
                    src_off = [a, c0, 0] + [0] * len(rest)
                    dst_off = [0, c0, f0] + [0] * len(rest)
                    src_off[row] += lo
                    copies.append(_SrcCopy(k, self.piece_mds[k].handle, md, dims, tuple(src_off), tuple(dst_off)))
                f0 += t
            self.sources.append((part, copies, None))
        self.src_size = [None if copies is None else _lib.dnnl_memory_desc_get_size(self.parts[part].src_md)
                         for part, copies, _ in self.sources]

    def __call__(self, pieces, w, b, y=None, y_offset=0):
        if y is None:
            y = np.empty(self.y_shape, np.float32)
        held = [None if size is None else host_array((size // 4,)) for size in self.src_size]
        buffers = [None if h is None else h[1] for h in held]
        _run_all([(lambda cp=cp, buf=buf: cp(pieces, buf))
                  for (_, copies, _), buf in zip(self.sources, buffers) for cp in (copies or ())])
        src = []
        for (part, copies, offset), buf in zip(self.sources, buffers):
            md = self.parts[part].src_md
            src.append(_Memory(md, pieces[0], offset) if copies is None else _Memory(md, buf))
        shared = len(src) == 1
        _run_all([(lambda i=i, wo=wo, bo=bo, yo=yo: self.parts[i].run(src[0 if shared else i], w, wo, b, bo,
                                                                     y, y_offset + yo))
                  for i, (wo, bo, yo) in enumerate(self.offsets)])
        return y


# Plans hold a few primitives each (mostly jit code); a decode uses a few dozen shapes.
PLAN_CACHE_SIZE = 128
_plans = collections.OrderedDict()


def _cached(cache, key, make):
    """cache[key], made by make() on a miss; least recently used entries beyond PLAN_CACHE_SIZE dropped."""
    with _lock:
        plan = cache.get(key)
        if plan is None:
            plan = cache[key] = make()
            while len(cache) > PLAN_CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return plan


def _plan(key):
    return _cached(_plans, key, lambda: _ConvPlan(*key))


def host_array(shape) -> tuple:
    """(tensor, its numpy view): an uninitialised float32 CPU tensor from MindSpore's allocator.

    MindSpore's CPU memory pool keeps what its tensors freed (a 1.3B forward at 81 frames leaves
    about 10 GB of it resident) for its own later tensors, never for numpy's; buffers taken from
    it reuse that memory where `np.empty` would add to it (the VAE decode after a denoise). The
    tensor must outlive the view."""
    t = mint.empty(tuple(int(n) for n in shape), dtype=ms.float32)
    return t, t.asnumpy()   # shares the tensor's buffer


def _numpy(t):
    a = t.asnumpy()  # shares the CPU tensor's buffer
    if a.dtype != np.float32:
        raise TypeError(f"oneDNN here takes float32 tensors, got {a.dtype}")
    return a if a.flags["C_CONTIGUOUS"] else np.ascontiguousarray(a)


def conv(x, weight, bias, stride, padding, prefix=None):
    """torch-semantics convolution (2-D or 3-D, groups 1) of MindSpore CPU tensors; returns a MindSpore tensor.

    `padding` is per spatial dim, symmetric, or a (before, after) pair per dim.
    `prefix` (optional) is input that precedes x along dim 2, e.g. the cached
    frames of a causal conv: the conv sees cat([prefix, x], 2), never built.
    """
    _require()
    nd = weight.ndim - 2
    pads = [p if isinstance(p, (tuple, list)) else (p, p) for p in padding]
    pad_l = tuple(int(p[0]) for p in pads)
    pad_r = tuple(int(p[1]) for p in pads)
    stride = tuple(int(s) for s in stride)
    if len(stride) != nd or len(pad_l) != nd:
        raise ValueError(f"stride {stride} / padding {padding} do not match a {nd}-D kernel")
    if prefix is not None and prefix.ndim == x.ndim and prefix.shape[2] == 0:
        prefix = None
    inputs = [x] if prefix is None else [prefix, x]
    shape = tuple(x.shape)
    pieces = None
    if prefix is not None:
        if prefix.ndim != x.ndim or tuple(prefix.shape[:2]) + tuple(prefix.shape[3:]) != shape[:2] + shape[3:]:
            raise ValueError(f"prefix {tuple(prefix.shape)} does not fit input {shape} (all dims but 2 must match)")
        pieces = (prefix.shape[2], x.shape[2])
        shape = shape[:2] + (sum(pieces),) + shape[3:]
    plan = _plan((shape, tuple(weight.shape), stride, pad_l, pad_r, bias is not None, threads(), None, None, pieces))
    out, y = host_array(plan.y_shape)
    plan([_numpy(t) for t in inputs], _numpy(weight), None if bias is None else _numpy(bias), y)
    return out


def upsample_conv2d(x, phase_weights, bias):
    """Parity-phase convolutions written interleaved: y[n, o, 2i+a, 2j+b] = conv(x, phase_weights[a][b])[n, o, i, j].

    Each phase is a 2×2 kernel over x [N,C,H,W] anchored so that output (i, j)
    reads rows i-1+a, i+a and columns j-1+b, j+b (zero outside), which is how a
    3×3 conv of a nearest-×2 upsampled image decomposes. Each phase's result is
    reordered straight into its strided positions of y: no crop, no interleave copy.
    A video x [B,C,T,H,W] is done frame by frame the same way, read and written
    in place as [B,O,T,2H,2W] (its frames are a strided batch to oneDNN).
    """
    _require()
    video = x.ndim == 5
    if video:
        bsz, c, t, h, w = x.shape
    else:
        bsz, t = 1, x.shape[0]
        c, h, w = x.shape[1:]
    o = phase_weights[0][0].shape[0]
    frame, up = h * w, 4 * h * w
    # Frames as the batch dim: strides of [T, C, H, W] over [C, T, H, W] storage (video) or plain [N, C, H, W].
    x_strides = (frame, t * frame, w, 1) if video else (c * frame, frame, w, 1)
    y_strides = (up, t * up, 4 * w, 2) if video else (o * up, up, 4 * w, 2)
    out, y = host_array((bsz, o, t, 2 * h, 2 * w) if video else (t, o, 2 * h, 2 * w))
    xn = _numpy(x)
    bn = None if bias is None else _numpy(bias)
    kernels = [[_numpy(k) for k in row] for row in phase_weights]
    for a in (0, 1):
        for b in (0, 1):
            if kernels[a][b].shape != (o, c, 2, 2):
                raise ValueError(f"phase kernel ({a}, {b}) has shape {kernels[a][b].shape}, expected {(o, c, 2, 2)}")
            plan = _plan(((t, c, h, w), (o, c, 2, 2), (1, 1), (1 - a, 1 - b), (a, b), bias is not None, threads(),
                          x_strides, y_strides))
            for i in range(bsz):
                plan([xn[i] if video else xn], kernels[a][b], bn, y[i] if video else y, (a * 2 * w + b) * 4)
    return out


# Hidden units per feed-forward part, at least: narrower splits cost more in dispatch than they gain.
MIN_COLUMNS_PER_PART = 256
# Token rows a feed-forward part computes at a time: bounds its hidden buffer (4,480 units: 18 MB), which
# is reused, instead of materialising [rows, hidden] (at 81 frames of 480p, 32,760 rows: 1.2 GB).
FEED_FORWARD_ROWS = 1024


class _Eltwise:
    """An in-place elementwise activation over a [rows, cols] float32 buffer."""

    def __init__(self, rows, cols, alg):
        self.md = _plain((rows, cols))
        self.prim = _Primitive(lambda pd: _check(_lib.dnnl_eltwise_forward_primitive_desc_create(
            pd, _engine, _FORWARD_INFERENCE, alg, self.md.handle, self.md.handle, 0.0, 0.0, None),
            f"eltwise {alg:#x} on {rows}x{cols}"))

    def __call__(self, a):
        m = _Memory(self.md.handle, a)
        self.prim([(_ARG_SRC, m.handle), (_ARG_DST, m.handle)])
        _check(_lib.dnnl_stream_wait(_stream()), "stream_wait")


_eltwise_plans = collections.OrderedDict()


def _eltwise(key):
    """The cached `_Eltwise` for (rows, cols, alg, part): one per part, as parts run concurrently."""
    return _cached(_eltwise_plans, key, lambda: _Eltwise(*key[:3]))


def feed_forward(x, w1, b1, w2, b2, activation="gelu_tanh"):
    """act(x @ w1.T + b1) @ w2.T + b2 for CPU float32 MindSpore tensors (x [..., D], w1 [H, D], w2 [O, H]).

    The hidden units are split in `threads()` parts, each run on its own thread
    start to end, `FEED_FORWARD_ROWS` rows at a time: its slice of the first
    sgemm (bias preloaded), the activation in place (oneDNN's eltwise, 0.2e-6 from
    torch's GELU), and its share of the second sgemm; the partial outputs are then
    summed. The hidden activations never reach MindSpore and stay one chunk
    per thread. On the Wan2.1 1.3B FFN, 20–30% faster than MindSpore's compiled
    matmul, GELU, matmul, from 192 to 1,950 rows.
    """
    _require()
    if activation not in _ELTWISE:
        raise ValueError(f"feed_forward: activation {activation!r} is not one of {sorted(_ELTWISE)}")
    xn, w1n, b1n, w2n, b2n = (_numpy(t) for t in (x, w1, b1, w2, b2))
    d, hidden, out = xn.shape[-1], w1n.shape[0], w2n.shape[0]
    if w1n.shape != (hidden, d) or w2n.shape != (out, hidden) or b1n.shape != (hidden,) or b2n.shape != (out,):
        raise ValueError(f"feed_forward: input {tuple(xn.shape)} does not fit w1 {tuple(w1n.shape)}, b1 "
                         f"{tuple(b1n.shape)}, w2 {tuple(w2n.shape)}, b2 {tuple(b2n.shape)}")
    xn = xn.reshape(-1, d)
    m = xn.shape[0]
    bounds = _split(hidden, max(1, min(threads(), hidden // MIN_COLUMNS_PER_PART)))
    held = [host_array((m, out)) for _ in bounds]
    partial = [a for _, a in held]
    alg = _ELTWISE[activation]
    chunk = max(1, FEED_FORWARD_ROWS)

    def part(i, h0, h1):
        n = h1 - h0
        buf = np.empty((min(chunk, m), n), np.float32)
        for r0 in range(0, m, chunk):
            rows = min(chunk, m - r0)
            h = buf[:rows]
            h[...] = b1n[h0:h1]   # sgemm adds into it with beta = 1
            _check(_lib.dnnl_sgemm(b"N", b"T", rows, n, d, 1.0, _P(xn.ctypes.data + r0 * d * 4), d,
                                   _P(w1n.ctypes.data + h0 * d * 4), d, 1.0, _P(h.ctypes.data), n),
                   f"sgemm {rows}x{d}x{n}")
            _eltwise((rows, n, alg, i))(h)
            # Columns h0:h1 of w2 [O, H] are w2's rows read with leading dimension H.
            _check(_lib.dnnl_sgemm(b"N", b"T", rows, out, n, 1.0, _P(h.ctypes.data), n, _P(w2n.ctypes.data + h0 * 4),
                                   hidden, 0.0, _P(partial[i].ctypes.data + r0 * out * 4), out), f"sgemm {rows}x{n}x{out}")

    _run_all([(lambda i=i, a=a, b=b: part(i, a, b)) for i, (a, b) in enumerate(bounds)])
    y = partial[0]
    for other in partial[1:]:
        y += other
    y += b2n
    return held[0][0].reshape(tuple(x.shape[:-1]) + (out,))


def _require():
    if not available():
        raise OneDNNError(f"MindSpore's oneDNN is not usable here: {_load_error}")


__all__ = ["conv", "upsample_conv2d", "feed_forward", "MIN_COLUMNS_PER_PART", "FEED_FORWARD_ROWS", "available", "unavailable_reason", "threads", "OneDNNError", "PLAN_CACHE_SIZE"]
