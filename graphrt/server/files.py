"""Paths inside a served folder, and uploads that are checked before they land.

Every name a client sends (file name, subfolder) is joined under its folder and
refused if it is absolute, holds a `..` part or a NUL, or resolves (symlinks
followed) to anything outside that folder."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}
ANIMATED_EXTENSIONS = VIDEO_EXTENSIONS | {".gif", ".webp"}
_ANNOTATION = re.compile(r"^(.*?)\s*\[(input|output|temp)\]$")


class UnsafePath(ValueError):
    """A client-supplied name that would leave its folder."""


def split_annotation(name: str) -> tuple[str, str | None]:
    """ComfyUI's 'file.png [output]' -> ('file.png', 'output')."""
    m = _ANNOTATION.match(name)
    return (m.group(1), m.group(2)) if m else (name, None)


def _parts(text: str, what: str) -> list[str]:
    if "\x00" in text:
        raise UnsafePath(f"{what} contains a NUL byte")
    text = text.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UnsafePath(f"{what} must be relative, got an absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"{what} must not contain '..'")
    return parts


def safe_path(root: str | os.PathLike, subfolder: str = "", filename: str = "") -> Path:
    """`root/subfolder/filename`, guaranteed (after resolving symlinks) to lie inside root."""
    root_r = Path(root).resolve()
    parts = _parts(subfolder or "", "subfolder") + _parts(filename or "", "filename")
    target = root_r.joinpath(*parts)
    resolved = target.resolve()
    if resolved != root_r and root_r not in resolved.parents:
        raise UnsafePath("the path leads outside its folder")
    return target


def clean_filename(name: str) -> str:
    """A plain file name (no folders), or UnsafePath."""
    if not name or name in (".", ".."):
        raise UnsafePath("missing file name")
    if "/" in name or "\\" in name or "\x00" in name:
        raise UnsafePath("the file name must not contain a folder or a NUL byte")
    if len(name.encode()) > 255:
        raise UnsafePath("the file name is too long")
    return name


def media_kind(path: str | os.PathLike) -> str:
    """'image' or 'video' if the file decodes as one, else ValueError saying why."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        from PIL import Image
        try:
            with Image.open(path) as img:
                img.verify()
            with Image.open(path) as img:   # verify() leaves the image unusable: decode for real
                img.load()
        except Exception as e:  # PIL raises many types for broken files
            raise ValueError(f"not a readable image: {type(e).__name__}: {e}") from None
        return "image"
    if ext in VIDEO_EXTENSIONS:
        import imageio_ffmpeg
        gen = None
        try:
            gen = imageio_ffmpeg.read_frames(str(path))
            meta = next(gen)
            next(gen)   # one decoded frame
            if not meta.get("size"):
                raise ValueError("no video stream")
        except (Exception, StopIteration) as e:
            raise ValueError(f"not a readable video: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        finally:
            if gen is not None:
                gen.close()
        return "video"
    raise ValueError(f"unsupported file type {ext or '(none)'}; accepted: "
                     + ", ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def place_upload(staged: Path, root: Path, subfolder: str, filename: str, overwrite: bool) -> str:
    """Move a checked upload into root/subfolder under `filename` (or 'name (1).ext' when taken,
    unless overwrite; an identical existing file is reused). Returns the final name."""
    folder = safe_path(root, subfolder)
    folder.mkdir(parents=True, exist_ok=True)
    target = safe_path(root, subfolder, filename)
    if not overwrite:
        stem, ext = os.path.splitext(filename)
        i = 1
        while target.exists():
            if target.is_file() and _digest(target) == _digest(staged):
                staged.unlink(missing_ok=True)
                return target.name
            target = safe_path(root, subfolder, f"{stem} ({i}){ext}")
            i += 1
    os.replace(staged, target) if staged.parent.stat().st_dev == folder.stat().st_dev else \
        shutil.move(str(staged), str(target))
    return target.name


def staging_file(folder: Path, suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)
