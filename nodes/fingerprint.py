"""Cache-key material for nodes that read files: a changed file must invalidate the cache."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (small inputs: images, videos, noise)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_stamp(path: str | os.PathLike) -> str:
    """Names, sizes and mtimes of every file below `path`.

    Hashing tens of GB of weights per run would defeat the cache, and a
    re-downloaded or edited checkpoint changes size or mtime.
    """
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def source_stamp(source: str) -> str:
    """A loader source: local folder/file -> tree stamp; the preset -> its version; a hub id -> the
    revision huggingface_hub's cache holds (outputs kept on disk must not outlive the weights)."""
    p = Path(os.path.expanduser(source))
    if p.exists():
        return tree_stamp(p)
    if source == "tiny":
        from .wan.checkpoints.presets import PRESET_VERSION
        return f"tiny:v{PRESET_VERSION}"
    return f"{source}@{_hub_revision(source) or 'not-cached'}"


def _hub_revision(repo_id: str) -> str | None:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except Exception:
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None
