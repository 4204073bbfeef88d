"""A model's blocks read from its checkpoint as they run (`offload="blocks"` / `"model"`): the
transformers, and the UMT5 text encoder.

`attach_block_stream` loads what stays resident (embeddings, head: every parameter outside the
model's `BLOCK_PREFIX`, `blocks.N.` by default), leaves the blocks' parameters unallocated and
hands the model a `models.block_stream.BlockStream` whose reader takes block k's tensors from the component's
lazy checkpoint (the memory-mapped file, renamed and fp8_scaled-dequantised per tensor by its
view) and widens them exactly as a resident load does (`checkpoint.widen`), so streamed and
resident runs compute on the same float32 values on CPU. On a device the widened host block is
copied to the device (in the device dtype) on the calling thread as it is handed out. Parameters a
model lists in `ROWS_FROM_FILE` (UMT5's 1 G-element token embedding) are not loaded either: the
rows a call looks up are read from the file and widened the same way.
"""
from __future__ import annotations

import os
import threading

import mindspore as ms
import numpy as np

from ..backend.runtime import device, to_ms_dtype
from ..models.block_stream import BlockStream
from .checkpoint import as_tensor, load_into, param_dtype, widen

OFFLOAD_MODES = ("none", "auto", "blocks", "model")


def check_offload(offload) -> str:
    mode = "none" if offload in (None, False, "") else str(offload).lower()
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    return mode


def _itemsize(dt) -> int:
    return 2 if dt in (ms.float16, ms.bfloat16) else 4


def _block_entries(model, src_of: dict, dtype, keep_fp32, prefix: str) -> list[list[tuple[str, object]]]:
    """Per block, (checkpoint key, dtype) of each weight in its `weights()` order."""
    name_of = {id(p): n for n, p in model.parameters_and_names()}
    entries = []
    for k, block in enumerate(model.blocks):
        names = [name_of[id(w)] for w in block.weights()]
        own = {n for n in name_of.values() if n.startswith(f"{prefix}{k}.")}
        if set(names) != own:   # a parameter weights() does not pass would stay unallocated
            raise RuntimeError(f"block {k}: weights() misses {sorted(own - set(names))[:3]}; cannot stream it")
        entries.append([(src_of[n], param_dtype(n, dtype, keep_fp32)) for n in names])
    return entries


def attach_block_stream(model, ckpt, dtype="float32", keep_fp32=(), ignore_unexpected=(), key_map=None,
                        source: str = "checkpoint", keep: bool = False, prefetch: bool = True):
    """Load `model`'s resident parameters from `ckpt` and stream its blocks from it (see the module
    doc). `keep`: blocks stay widened once read, until the residency registry releases them."""
    dtype = to_ms_dtype(dtype)
    prefix, by_rows = getattr(model, "BLOCK_PREFIX", "blocks."), tuple(getattr(model, "ROWS_FROM_FILE", ()))
    src_of = load_into(model, ckpt, dtype=dtype, keep_fp32=keep_fp32, ignore_unexpected=ignore_unexpected,
                       key_map=key_map, source=source, skip=lambda name: name.startswith(prefix) or name in by_rows)
    for name in by_rows:
        model.rows_from_file(name, _row_reader(ckpt, src_of[name], param_dtype(name, dtype, keep_fp32)))
    entries = _block_entries(model, src_of, dtype, keep_fp32, prefix)
    on_host = device() == "CPU"
    # A streamed block's memory is read into again once the block has run, sparing the OS zeroing
    # fresh pages for every block (~35% of the widening time); only where kernels run synchronously,
    # so that nothing can still read a block whose buffers are reused.
    buffers = _Buffers() if on_host and not keep and sync_launch() else None
    read_into = getattr(ckpt, "read_into", None)
    will_need = getattr(ckpt, "will_need", None)

    def read(k: int) -> list:
        if will_need is not None:       # the block's tensors read from disk while the first ones are widened
            for key, _ in entries[k]:
                will_need(key)
        out = []
        for key, target in entries[k]:
            a = None
            if buffers is not None and read_into is not None and target in (ms.float32, ms.float16):
                a = buffers.take(ckpt.shape(key), np.float16 if target == ms.float16 else np.float32)
                if not read_into(key, a):
                    buffers.put_back(a)
                    a = None
            if a is None:
                a = widen(ckpt.get(key), target)
            t = ms.from_numpy(a) if on_host and target in (ms.float32, ms.float16) else (a, target)
            if buffers is not None and not isinstance(t, tuple):
                buffers.lend(t, a)
            out.append(t)
        return out

    finish = None if on_host else _to_device
    block_nbytes = sum(int(np.prod(ckpt.shape(key))) * _itemsize(t) for key, t in entries[0]) if entries else 0
    name = f"{source} ({'blocks kept' if keep else 'blocks streamed'})"
    stream = BlockStream(read, len(entries), block_nbytes, keep=keep, name=name, finish=finish, prefetch=prefetch,
                         buffers=buffers)
    model.stream_blocks(stream)
    return model


def _row_reader(ckpt, key: str, target):
    """rows(ids) -> the tensor of rows `ids` of `key`, read from the file and widened to `target`
    as a resident load would hold them."""
    get_rows = getattr(ckpt, "get_rows", None)

    def rows(ids):
        ids = np.asarray(ids, np.int64)
        a = get_rows(key, ids) if get_rows is not None else np.asarray(ckpt.get(key))[ids]
        return as_tensor(a, target, share=True)
    return rows


class _Buffers:
    """Host arrays of streamed blocks, recycled once their block has run (`BlockStream(buffers=)`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._free: dict[tuple, list] = {}     # (shape, dtype) -> arrays ready to be read into
        self._lent: dict[int, np.ndarray] = {}  # id(tensor) -> the array it wraps

    def take(self, shape, dtype) -> np.ndarray:
        with self._lock:
            free = self._free.get((tuple(shape), np.dtype(dtype)))
            if free:
                return free.pop()
        return np.empty(tuple(shape), dtype)

    def put_back(self, a: np.ndarray) -> None:
        with self._lock:
            self._free.setdefault((a.shape, a.dtype), []).append(a)

    def lend(self, tensor, a: np.ndarray) -> None:
        with self._lock:
            self._lent[id(tensor)] = a

    def give(self, weights) -> None:
        """The block of `weights` has run: its arrays may be read into again."""
        with self._lock:
            for t in weights:
                a = self._lent.pop(id(t), None)
                if a is not None:
                    self._free.setdefault((a.shape, a.dtype), []).append(a)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._lent.clear()


def sync_launch() -> bool:
    """Whether kernels run before their launch returns (CPU, unless GRAPHRT_ASYNC_LAUNCH=1)."""
    return device() == "CPU" and os.environ.get("GRAPHRT_ASYNC_LAUNCH") != "1"


def _to_device(items: list) -> list:
    """Host arrays -> device tensors in their dtype (MindSpore copies on the first use elsewhere)."""
    out = []
    for item in items:
        a, target = item if isinstance(item, tuple) else (item, None)
        t = ms.from_numpy(a) if isinstance(a, np.ndarray) else a
        if target is not None and target not in (ms.float32, ms.float16):
            t = t.astype(target)
        else:
            try:
                t = t.move_to(device(), blocking=False)
            except (AttributeError, RuntimeError, TypeError, ValueError):
                pass
        out.append(t)
    return out
