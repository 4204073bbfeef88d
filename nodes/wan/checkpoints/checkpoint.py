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

    def file_of(self, key) -> Path:
        return self._where[key].path


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


def load_into(cell: ms.nn.Cell, ckpt: Checkpoint | Mapping[str, np.ndarray], dtype="float32",
              keep_fp32: Iterable[str] = (), ignore_unexpected: Iterable[str] = (),
              key_map=None, source: str = "checkpoint") -> None:
    """Copy checkpoint tensors into `cell`'s parameters, checking names and shapes.

    Every parameter must be present with the right shape; the first mismatch
    is reported with its key and both shapes. `keep_fp32` names modules kept in
    float32 whatever `dtype` is (diffusers' `_keep_in_fp32_modules`).
    """
    dtype = to_ms_dtype(dtype)
    keep_fp32 = tuple(keep_fp32)
    lazy = callable(getattr(ckpt, "shape", None))   # a Checkpoint or a view of one, not a dict
    get = ckpt.get if lazy else ckpt.__getitem__
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
    for name, param in params.items():
        target = ms.float32 if _keeps_fp32(name, keep_fp32) else dtype
        arr = np.asarray(get(src_of[name]))
        if target == ms.float32:
            t = ms.Tensor(np.ascontiguousarray(arr, dtype=np.float32))
        elif target == ms.float16:
            t = ms.Tensor(np.ascontiguousarray(arr, dtype=np.float16))
        else:
            t = ms.Tensor(np.ascontiguousarray(arr, dtype=np.float32)).astype(target)
        param.set_data(t)
        del arr, t
