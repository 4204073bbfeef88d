"""The output cache's disk tier: node outputs kept as safetensors files named by node signature.

A signature already covers the node's class, constants, fingerprint (a weights file's stamp)
and ancestry, so a file found under it on a later day holds exactly what the node would compute
again. Only values every part of which has a codec are written: arrays, scalars, strings and
containers are built in; a node pack registers its own types (`register_codec`), so the engine
knows nothing of what it stores. Files are written to a temporary name and renamed, and carry a
hash of their tensors, so a partial or corrupt entry is detected, removed and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

FORMAT = "graphrt-outputs/1"
_CODECS: list[tuple[type, str, object, object]] = []


def register_codec(pytype: type, tag: str, encode, decode) -> None:
    """`encode(value)` returns something encodable (arrays, scalars, containers, other codec types);
    `decode(that)` rebuilds the value. The first registered type that `value` is an instance of wins."""
    if any(t == tag for _, t, _, _ in _CODECS):
        _CODECS[:] = [c for c in _CODECS if c[1] != tag]
    _CODECS.append((pytype, tag, encode, decode))


class NotEncodable(TypeError):
    pass


def _encode(value, tensors: dict):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = np.ascontiguousarray(value)
        return {"__array__": name}
    if isinstance(value, np.generic):
        return value.item()
    for pytype, tag, enc, _ in _CODECS:
        if isinstance(value, pytype):
            return {"__codec__": tag, "value": _encode(enc(value), tensors)}
    if isinstance(value, (list, tuple)):
        return {"__seq__": "tuple" if isinstance(value, tuple) else "list",
                "items": [_encode(v, tensors) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, tensors) for k, v in value.items()}}
    raise NotEncodable(f"no disk codec for {type(value).__module__}.{type(value).__qualname__}")


def _decode(spec, tensors: dict):
    if not isinstance(spec, dict):
        return spec
    if "__array__" in spec:
        return tensors[spec["__array__"]]
    if "__codec__" in spec:
        for _, tag, _, dec in _CODECS:
            if tag == spec["__codec__"]:
                return dec(_decode(spec["value"], tensors))
        raise NotEncodable(f"no disk codec named {spec['__codec__']!r} is registered")
    if "__seq__" in spec:
        items = [_decode(v, tensors) for v in spec["items"]]
        return tuple(items) if spec["__seq__"] == "tuple" else items
    return {k: _decode(v, tensors) for k, v in spec["__dict__"].items()}


def _digest(tensors: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        a = tensors[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


class DiskTier:
    """Outputs under `folder`, at most `max_bytes` of them (oldest-used files go first)."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int | None = None):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path(self, sig: str) -> Path:
        return self.folder / sig[:2] / f"{sig}.safetensors"

    def __contains__(self, sig: str) -> bool:
        return self.path(sig).is_file()

    def put(self, sig: str, outputs: tuple) -> bool:
        """Write `outputs` unless some part has no codec; False then (nothing is written)."""
        from safetensors.numpy import save_file
        tensors: dict = {}
        try:
            spec = _encode(tuple(outputs), tensors)
        except NotEncodable:
            return False
        target = self.path(sig)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "spec": json.dumps(spec), "digest": _digest(tensors)}
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=target.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.max_bytes is not None:
            self._trim()
        return True

    def get(self, sig: str):
        """The outputs stored under `sig`, or None if absent; a damaged entry is deleted and None."""
        from safetensors import safe_open
        path = self.path(sig)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("format") != FORMAT or meta.get("digest") != _digest(tensors):
                raise ValueError("digest mismatch")
            value = _decode(json.loads(meta["spec"]), tensors)
        except Exception:  # truncated, corrupt, foreign or undecodable: recompute, never serve
            path.unlink(missing_ok=True)
            return None
        os.utime(path)      # recency for trimming
        return value

    def _trim(self):
        with self._lock:
            files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.folder.glob("*/*.safetensors")]
            total = sum(s for _, s, _ in files)
            for _, size, p in sorted(files):
                if total <= self.max_bytes:
                    break
                p.unlink(missing_ok=True)
                total -= size
