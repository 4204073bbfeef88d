"""Reading and writing images, videos and raw tensors.

Frames are float arrays `[N, H, W, 3]` in 0..1 (ComfyUI's IMAGE convention).
Every writer produces its file under a temporary name in the target folder and
renames it into place, so an interrupted or failed save never leaves a
half-written file behind.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def to_uint8(frames) -> np.ndarray:
    arr = np.asarray(frames.asnumpy() if hasattr(frames, "asnumpy") else frames, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected frames [N, H, W, 3] in 0..1, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return (np.clip(arr[..., :3], 0.0, 1.0) * 255.0).round().astype(np.uint8)


def next_path(output_dir: str | os.PathLike, prefix: str, ext: str) -> Path:
    """`<output_dir>/<prefix>_00001.<ext>`, the counter one past the highest in use.

    `prefix` may name a subfolder ("wan/t2v"), but must stay inside output_dir.
    """
    root = Path(output_dir).resolve()
    target = (root / prefix).resolve()
    if root != target and root not in target.parents:
        raise ValueError(f"filename prefix {prefix!r} points outside the output folder {root}")
    folder, stem = target.parent, target.name
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d+)(?:\.|$)")
    used = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    suffix = f".{ext}" if ext else ""
    return folder / f"{stem}_{(max(used) + 1 if used else 1):05d}{suffix}"


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside `final` (same extension); rename on success."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file private (0600); a saved output gets the usual umask-based mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_mp4(frames, path: str | os.PathLike, fps: float = 16.0, crf: int = 19) -> Path:
    """H.264 in yuv420p (what every player accepts), through imageio-ffmpeg."""
    import imageio_ffmpeg

    data = to_uint8(frames)
    n, h, w, _ = data.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {w}x{h}")
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", str(crf)])
        writer.send(None)
        try:
            for frame in data:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return path


def save_webp(frames, path: str | os.PathLike, fps: float = 16.0, quality: int = 90, lossless: bool = False) -> Path:
    from PIL import Image

    images = [Image.fromarray(f) for f in to_uint8(frames)]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:],
                       duration=max(1, round(1000.0 / fps)), loop=0, quality=quality, lossless=lossless)
    return path


def save_png_frames(frames, folder: str | os.PathLike) -> Path:
    """One PNG per frame in a new folder, which appears only once complete."""
    from PIL import Image

    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        for i, f in enumerate(to_uint8(frames)):
            Image.fromarray(f).save(tmp / f"frame_{i:05d}.png")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_tensor(array, path: str | os.PathLike, name: str = "tensor") -> Path:
    """`.npy` or `.safetensors` (key `name`), float32 as computed."""
    arr = np.asarray(array.asnumpy() if hasattr(array, "asnumpy") else array)
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, arr)
        elif path.suffix == ".safetensors":
            from .checkpoints.safetensors_io import save_file
            save_file({name: arr}, tmp)
        else:
            raise ValueError(f"unsupported tensor file type {path.suffix!r}; use .npy or .safetensors")
    return path


def load_tensor(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A tensor from `.npy` or `.safetensors` (the only key, or `key`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".safetensors":
        from .checkpoints.safetensors_io import SafetensorsFile
        f = SafetensorsFile(path)
        keys = list(f.keys())
        if key is None:
            if len(keys) != 1:
                raise ValueError(f"{path} holds {len(keys)} tensors {keys[:8]}; name the one to use")
            key = keys[0]
        if key not in f:
            raise KeyError(f"{path} has no tensor {key!r}; it has {keys[:8]}")
        return np.array(f.get(key))
    raise ValueError(f"unsupported tensor file type {path.suffix!r}; use .npy or .safetensors")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as `[1, H, W, 3]` float32 in 0..1 (alpha dropped)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        return (np.asarray(im, dtype=np.float32) / 255.0)[None]


def load_video(path: str | os.PathLike, max_frames: int = 0, skip_first: int = 0, every_nth: int = 1):
    """Frames `[N, H, W, 3]` float32 in 0..1, and the file's fps."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = []
    try:
        for i, buf in enumerate(reader):
            if i < skip_first or (i - skip_first) % max(1, every_nth):
                continue
            frames.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
            if max_frames and len(frames) >= max_frames:
                break
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"{path} has no frames to read")
    return np.stack(frames).astype(np.float32) / 255.0, float(meta.get("fps") or 0.0)


def probe_video(path: str | os.PathLike) -> dict:
    """Frame count, size and fps of a video file (counted by decoding)."""
    import imageio_ffmpeg

    n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    return {"frames": n, "width": meta["size"][0], "height": meta["size"][1], "fps": meta.get("fps")}


RESAMPLE = {"lanczos": 1, "bilinear": 2, "bicubic": 3, "nearest": 0}   # PIL's filter numbers


def resize_frames(frames, width: int, height: int, method: str = "lanczos", crop: str = "none") -> np.ndarray:
    """Frames [N, H, W, 3] in 0..1 resized to width×height through 8-bit PIL images (as diffusers'
    processors do, so results match them); `crop="center"` keeps the aspect ratio by cropping first."""
    from PIL import Image
    frames = np.asarray(frames, np.float32)
    n, h, w = frames.shape[:3]
    box = None
    if crop == "center" and h * width != w * height:
        if w * height > h * width:      # too wide: crop the sides
            cw = h * width / height
            box = ((w - cw) / 2, 0, (w + cw) / 2, h)
        else:
            ch = w * height / width
            box = (0, (h - ch) / 2, w, (h + ch) / 2)
    out = np.empty((n, height, width, 3), np.float32)
    for i, f in enumerate(to_uint8(frames)):
        img = Image.fromarray(f)
        out[i] = np.asarray(img.resize((width, height), RESAMPLE[method], box=box), np.float32) / 255.0
    return out
