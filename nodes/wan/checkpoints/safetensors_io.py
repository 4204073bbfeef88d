"""A safetensors reader that needs no framework dtype support.

numpy has no bfloat16 or fp8, and MindSpore's own reader breaks on some numpy
versions (mindspore_cpu.md §7.4), so tensors are read from the file directly
and widened here. Reading is lazy: a tensor's bytes are read only when `get`
is called, so a loader holds at most one source tensor at a time.

The file is memory-mapped: `get` widens straight from the mapped pages (no
intermediate copy of the stored bytes), then drops them from the process's
mapping (`MADV_DONTNEED`), so they stay in the OS page cache, which the OS can
reclaim, and never count as the process's resident memory.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from pathlib import Path

import numpy as np

_PLAIN = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}
_WIDENED = {"BF16", "F8_E4M3", "F8_E5M2"}      # read as float32
_WIDTH = {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, **{k: np.dtype(v).itemsize for k, v in _PLAIN.items()}}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def _fp8_table(exp_bits: int, man_bits: int, bias: int, has_inf: bool) -> np.ndarray:
    """All 256 fp8 values as float32 (exact; fp8 fits in fp32)."""
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    e = (codes >> man_bits) & ((1 << exp_bits) - 1)
    m = codes & ((1 << man_bits) - 1)
    normal = (1.0 + m / (1 << man_bits)) * np.exp2(e.astype(np.float64) - bias)
    sub = (m / (1 << man_bits)) * np.exp2(1.0 - bias)
    val = sign * np.where(e == 0, sub, normal)
    top = e == (1 << exp_bits) - 1
    if has_inf:  # e5m2: IEEE-like
        val = np.where(top & (m == 0), sign * np.inf, val)
        val = np.where(top & (m != 0), np.nan, val)
    else:  # e4m3fn: only S.1111.111 is NaN, no infinities
        val = np.where(top & (m == (1 << man_bits) - 1), np.nan, val)
    return val.astype(np.float32)


_FP8 = {"F8_E4M3": _fp8_table(4, 3, 7, False), "F8_E5M2": _fp8_table(5, 2, 15, True)}


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """Lazy view of one .safetensors file: `keys()`, `shape(k)`, `dtype(k)`, `get(k)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: not a safetensors file (only {size} bytes)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > 100_000_000:
                    raise CheckpointError(
                        f"{self.path}: not a safetensors file or truncated (header claims {n} bytes, file has {size})")
                header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._base = 8 + n
        end = 0
        for key, ent in header.items():
            try:
                dt, shape, (a, b) = ent["dtype"], ent["shape"], ent["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: corrupt header entry for {key!r}") from None
            if dt not in _WIDTH:
                raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {dt}")
            if b - a != _WIDTH[dt] * int(np.prod(shape, dtype=np.int64)):
                raise CheckpointError(f"{self.path}: tensor {key!r} byte range does not match its shape {shape}")
            end = max(end, b)
        if self._base + end > size:
            raise CheckpointError(
                f"{self.path}: file is truncated ({size} bytes, its header needs {self._base + end}); "
                "download it again")
        self._size = size
        self._map: mmap.mmap | None = None       # opened on the first read
        self._map_lock = threading.Lock()

    def keys(self):
        return self._entries.keys()

    def __contains__(self, key):
        return key in self._entries

    def shape(self, key) -> tuple:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key) -> str:
        return self._entries[key]["dtype"]

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with self._map_lock:
                if self._map is None:
                    with open(self.path, "rb") as f:
                        self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def _forget_pages(self, start: int, stop: int) -> None:
        """Unmap [start, stop) from this process (the page cache keeps it): mapped pages that
        were read would otherwise count as resident memory until the file is closed."""
        if not _DONTNEED or stop <= start:
            return
        first = start - start % mmap.PAGESIZE
        try:
            self._map.madvise(mmap.MADV_DONTNEED, first, stop - first)
        except (OSError, ValueError):
            pass

    def will_need(self, key) -> None:
        """Ask the OS to start reading tensor `key` from disk now (a streamed block's tensors are
        asked for together, so that widening the first overlaps reading the rest)."""
        if not _WILLNEED:
            return
        a, b = self._entries[key]["data_offsets"]
        start, stop = self._base + a, self._base + b
        if stop > start:
            first = start - start % mmap.PAGESIZE
            try:
                self._mapped().madvise(mmap.MADV_WILLNEED, first, stop - first)
            except (OSError, ValueError):
                pass

    def get(self, key, widen: bool = True) -> np.ndarray:
        """The tensor as numpy (a new array, not a view of the file); BF16 and FP8 are widened
        to float32 (exact). With `widen=False` BF16 comes back as its raw uint16 bits."""
        ent = self._entries[key]
        a, b = ent["data_offsets"]
        shape = tuple(ent["shape"])
        dt = ent["dtype"]
        start = self._base + a
        raw = np.frombuffer(self._mapped(), dtype=np.uint8, count=b - a, offset=start) if b > a \
            else np.zeros(0, np.uint8)
        try:
            if dt == "BF16":
                bits = raw.view(np.uint16)
                if not widen:
                    return bits.reshape(shape).copy()
                out = np.empty(bits.shape, np.uint32)
                np.left_shift(bits, 16, out=out, dtype=np.uint32)   # = bf16_bits_to_float32, in one pass
                return out.view(np.float32).reshape(shape)
            if dt in _FP8:
                return _FP8[dt][raw].reshape(shape)
            return raw.view(_PLAIN[dt]).reshape(shape).copy()
        finally:
            del raw
            self._forget_pages(start, self._base + b)

    def get_rows(self, key, rows) -> np.ndarray:
        """Rows `rows` (indices along the first axis) of tensor `key`, widened as `get` does; only
        those rows are read from the file (a token embedding looked up without loading it)."""
        ent = self._entries[key]
        shape, dt = tuple(ent["shape"]), ent["dtype"]
        rows = np.asarray(rows, np.int64)
        if len(shape) < 1 or (rows.size and (rows.min() < 0 or rows.max() >= shape[0])):
            raise IndexError(f"{self.path}: rows of {key!r} (shape {shape}) out of range")
        a, b = ent["data_offsets"]
        start, width = self._base + a, _WIDTH[dt] * int(np.prod(shape[1:], dtype=np.int64))
        raw = np.frombuffer(self._mapped(), dtype=np.uint8, count=b - a, offset=start) if b > a \
            else np.zeros(0, np.uint8)
        try:
            picked = raw.reshape(shape[0], width)[rows.reshape(-1)] if rows.size else np.zeros((0, width), np.uint8)
        finally:
            del raw
            self._forget_pages(start, self._base + b)
        out = np.empty(picked.shape[0] * (width // _WIDTH[dt]), np.float32 if dt in _WIDENED else _PLAIN[dt])
        _widen_into(picked.reshape(-1), dt, out)
        return out.reshape(rows.shape + shape[1:])

    def read_into(self, key, out: np.ndarray) -> bool:
        """Widen tensor `key` into `out` (C-contiguous, its shape; float32 or float16) as `get`
        would, without allocating `out`'s size again: `_CHUNK` elements at a time, each chunk's
        mapped pages dropped once read (so the stored bytes and `out` are never both resident);
        BF16 / FP8 / F32 into float16 go through a float32 chunk, rounded as
        `get(key).astype(float16)`. False if this dtype pair is not supported."""
        ent = self._entries[key]
        dt = ent["dtype"]
        if tuple(out.shape) != tuple(ent["shape"]) or not out.flags.c_contiguous:
            return False
        if out.dtype not in (np.float32, np.float16) or dt not in ("BF16", "F32", "F16", *_FP8):
            return False
        a, b = ent["data_offsets"]
        start = self._base + a
        if b <= a:
            return True
        raw = np.frombuffer(self._mapped(), dtype=np.uint8, count=b - a, offset=start)
        flat, width = out.reshape(-1), _WIDTH[dt]
        direct = out.dtype == np.float32 or dt == "F16"
        scratch = None if direct else np.empty(min(_CHUNK, flat.size), np.float32)
        try:
            for i in range(0, flat.size, _CHUNK):
                n = min(_CHUNK, flat.size - i)
                src = raw[i * width:(i + n) * width]
                if direct:
                    _widen_into(src, dt, flat[i:i + n])
                else:
                    _widen_into(src, dt, scratch[:n])
                    flat[i:i + n] = scratch[:n]
                del src
                self._forget_pages(start + i * width, start + (i + n) * width)
        finally:
            del raw
            self._forget_pages(start, self._base + b)
        return True


# elements `read_into` converts at a time (16 MB in float32)
_CHUNK = 1 << 22


def _widen_into(raw: np.ndarray, dt: str, out: np.ndarray) -> None:
    """The stored bytes `raw` of dtype `dt` into `out` (1-D, their element count; float32, or
    float16 for F16)."""
    if dt == "BF16":   # only ever into float32: float16 goes through a float32 chunk
        np.left_shift(raw.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    elif dt in _FP8:
        np.take(_FP8[dt], raw, out=out)
    else:
        out[...] = raw.view(_PLAIN[dt])


_DONTNEED = hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")
_WILLNEED = hasattr(mmap, "MADV_WILLNEED") and hasattr(mmap.mmap, "madvise")


def save_file(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write float32/float16/int numpy arrays as safetensors, atomically."""
    path = Path(path)
    header, blobs, offset = {}, [], 0
    inv = {np.dtype(v): k for k, v in _PLAIN.items()}
    for key, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        header[key] = {"dtype": inv[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)
