"""A component's tensors (one file or shards) and their copy into a Cell.

A diffusers component folder holds `config.json` and either one
`<name>.safetensors` or shards listed in `<name>.safetensors.index.json`.
Weights are copied into the model one tensor at a time, cast on the way, so
a load never holds two full copies of the model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import mindspore as ms

from ..backend.runtime import to_ms_dtype
from .safetensors_io import CheckpointError, SafetensorsFile
from .torch_pickle import TorchPickleFile, is_torch_file


class Checkpoint:
    """All tensors of one component, possibly spread over shards; lazy. Files are safetensors, or
    PyTorch checkpoints (`.pth` and the like, read without torch by `torch_pickle`)."""

    def __init__(self, files: Iterable[Path]):
        self.files = [TorchPickleFile(p) if is_torch_file(p) else SafetensorsFile(p) for p in files]
        self._where: dict[str, SafetensorsFile | TorchPickleFile] = {}
        for f in self.files:
            for k in f.keys():
                self._where[k] = f

    def keys(self):
        return self._where.keys()

    def __contains__(self, key):
        return key in self._where

    def __len__(self):
        return len(self._where)

    def shape(self, key):
        return self._where[key].shape(key)

    def get(self, key) -> np.ndarray:
        return self._where[key].get(key)

    def get_rows(self, key, rows) -> np.ndarray:
        """`get(key)[rows]`, reading only those rows (see `SafetensorsFile.get_rows`)."""
        return self._where[key].get_rows(key, rows)

    def file_of(self, key) -> Path:
        return self._where[key].path

    def read_into(self, key, out: np.ndarray) -> bool:
        """`get(key)` widened into `out` without allocating, where the file format can (safetensors)."""
        f = self._where[key]
        return bool(getattr(f, "read_into", None)) and f.read_into(key, out)

    def will_need(self, key) -> None:
        """Start reading `key` from disk ahead of `get` (safetensors; a no-op for other formats)."""
        f = self._where[key]
        if hasattr(f, "will_need"):
            f.will_need(key)


def open_checkpoint(folder_or_file: Path, weights_name: str) -> Checkpoint:
    """The component's weights: an index with shards, one file, or the given file."""
    p = Path(folder_or_file)
    if p.is_file():
        return Checkpoint([p])
    index = p / f"{weights_name}.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: invalid shard index ({e})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (p / s).exists()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}")
        return Checkpoint(p / s for s in shards)
    single = p / f"{weights_name}.safetensors"
    if single.exists():
        return Checkpoint([single])
    found = sorted(x.name for x in p.glob("*.safetensors"))
    if len(found) == 1:
        return Checkpoint([p / found[0]])
    raise FileNotFoundError(f"{p} has no {weights_name}.safetensors (or its shard index); found {found or 'no safetensors files'}")


def _keeps_fp32(name: str, keep_fp32: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(k in parts or k in name for k in keep_fp32)


def param_dtype(name: str, dtype, keep_fp32: Iterable[str] = ()):
    """The dtype parameter `name` is held in: float32 for `keep_fp32` modules, else `dtype`."""
    return ms.float32 if _keeps_fp32(name, tuple(keep_fp32)) else to_ms_dtype(dtype)


def widen(arr: np.ndarray, target) -> np.ndarray:
    """A checkpoint tensor as the host array a parameter of dtype `target` holds: float32 or
    float16 in numpy (exact widening; bf16 / fp8 arrive as float32 already). Other targets
    (bfloat16) get the float32 array, cast by `as_tensor`."""
    return np.ascontiguousarray(arr, dtype=np.float16 if target == ms.float16 else np.float32)


def as_tensor(arr: np.ndarray, target, share: bool = False) -> ms.Tensor:
    """The parameter value of dtype `target` for checkpoint tensor `arr` (`share`: wrap the
    widened array without copying it, for an array nothing else holds)."""
    a = widen(arr, target)
    t = ms.from_numpy(a) if share and a.flags.writeable else ms.Tensor(a)
    if target not in (ms.float32, ms.float16):
        t = t.astype(target)
    return t


def check_fit(cell: ms.nn.Cell, ckpt: Checkpoint | Mapping[str, np.ndarray], key_map=None,
              ignore_unexpected: Iterable[str] = (), source: str = "checkpoint") -> dict:
    """{parameter name: checkpoint key} for every parameter of `cell`, after checking that each is
    present with the right shape and that the checkpoint has no unexpected key (reading no data).
    The first mismatch is reported with its key and both shapes."""
    lazy = callable(getattr(ckpt, "shape", None))   # a Checkpoint or a view of one, not a dict
    available = set(ckpt.keys())
    params = dict(cell.parameters_and_names())
    src_of = {name: (key_map(name) if key_map else name) for name in params}
    missing = [n for n, k in src_of.items() if k not in available]
    if missing:
        raise CheckpointError(
            f"{source} does not fit the model: {len(missing)} parameter(s) missing, first '{src_of[missing[0]]}'")
    used = set(src_of.values())
    unexpected = [k for k in available - used if not any(pat in k for pat in ignore_unexpected)]
    if unexpected:
        raise CheckpointError(
            f"{source} does not fit the model: {len(unexpected)} unexpected key(s), first '{sorted(unexpected)[0]}'")
    for name, param in params.items():
        key = src_of[name]
        shape = tuple(ckpt.shape(key)) if lazy else tuple(np.shape(ckpt[key]))
        if shape != tuple(param.shape):
            raise CheckpointError(
                f"{source} does not fit the model config: '{key}' has shape {shape} in the checkpoint, "
                f"the model expects {tuple(param.shape)}")
    return src_of


def load_into(cell: ms.nn.Cell, ckpt: Checkpoint | Mapping[str, np.ndarray], dtype="float32",
              keep_fp32: Iterable[str] = (), ignore_unexpected: Iterable[str] = (),
              key_map=None, source: str = "checkpoint", skip=None) -> dict:
    """Copy checkpoint tensors into `cell`'s parameters, checking names and shapes.

    Every parameter must be present with the right shape; the first mismatch
    is reported with its key and both shapes. `keep_fp32` names modules kept in
    float32 whatever `dtype` is (diffusers' `_keep_in_fp32_modules`). Parameters for which
    `skip(name)` is true are checked but not loaded (a streamed model's blocks). Returns
    {parameter name: checkpoint key}.
    """
    dtype = to_ms_dtype(dtype)
    keep_fp32 = tuple(keep_fp32)
    src_of = check_fit(cell, ckpt, key_map, ignore_unexpected, source)
    get = ckpt.get if callable(getattr(ckpt, "shape", None)) else ckpt.__getitem__
    read_into = getattr(ckpt, "read_into", None)
    for name, param in cell.parameters_and_names():
        if skip is not None and skip(name):
            continue
        target = param_dtype(name, dtype, keep_fp32)
        arr, owned = None, False
        if read_into is not None and target in (ms.float32, ms.float16):
            # straight into the parameter's own host memory: a float32 copy of UMT5's 1 GB-element
            # embedding on its way to float16, and a second copy for the Tensor, would add 6 GB
            arr = np.empty(tuple(param.shape), np.float16 if target == ms.float16 else np.float32)
            owned = read_into(src_of[name], arr)
        if not owned:
            arr = np.asarray(get(src_of[name]))
        t = as_tensor(arr, target, share=owned)
        param.set_data(t)
        del arr, t
    return src_of
