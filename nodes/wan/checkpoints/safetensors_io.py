"""A safetensors reader that needs no framework dtype support.

numpy has no bfloat16 or fp8, and MindSpore's own reader breaks on some numpy
versions (mindspore_cpu.md §7.4), so tensors are read from the file directly
and widened here. Reading is lazy: a tensor's bytes are read only when `get`
is called, so a loader holds at most one source tensor at a time.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_PLAIN = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}
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

    def keys(self):
        return self._entries.keys()

    def __contains__(self, key):
        return key in self._entries

    def shape(self, key) -> tuple:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key) -> str:
        return self._entries[key]["dtype"]

    def get(self, key, widen: bool = True) -> np.ndarray:
        """The tensor as numpy; BF16 and FP8 are widened to float32 (exact).

        With `widen=False` BF16 comes back as its raw uint16 bits.
        """
        ent = self._entries[key]
        a, b = ent["data_offsets"]
        shape = tuple(ent["shape"])
        dt = ent["dtype"]
        # Plain reads, not a memory map: mapped pages would count as resident
        # memory until unmapped, doubling a loader's apparent footprint.
        raw = np.fromfile(self.path, dtype=np.uint8, count=b - a, offset=self._base + a)
        if dt == "BF16":
            bits = raw.view(np.uint16).reshape(shape)
            return bf16_bits_to_float32(bits) if widen else bits
        if dt in _FP8:
            return _FP8[dt][raw].reshape(shape)
        return raw.view(_PLAIN[dt]).reshape(shape)


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
