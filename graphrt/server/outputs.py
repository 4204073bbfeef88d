"""A node's UI info (`ctx.ui(files=[paths])`, other JSON values) in ComfyUI's
`executed.output` shape: `{"images": [{filename, subfolder, type}], "animated": [bool]}`."""
from __future__ import annotations

from pathlib import Path

from .files import ANIMATED_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

_MEDIA = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def file_ref(path, folders: dict) -> dict | None:
    """{filename, subfolder, type} for a file inside one of `folders` ({type: root})."""
    p = Path(path).resolve()
    for kind, root in folders.items():
        root = Path(root).resolve()
        if root in p.parents:
            sub = "" if p.parent == root else p.parent.relative_to(root).as_posix()
            return {"filename": p.name, "subfolder": sub, "type": kind}
    return None


def comfy_ui(ui: dict, folders: dict) -> dict:
    if not ui:
        return {}
    out: dict = {}
    files = ui.get("files") or []
    images, animated = [], []
    for f in files:
        p = Path(f)
        entries = sorted(x for x in p.iterdir() if x.suffix.lower() in _MEDIA) if p.is_dir() else [p]
        for e in entries:
            ref = file_ref(e, folders)
            if ref is not None:
                images.append(ref)
                animated.append(e.suffix.lower() in ANIMATED_EXTENSIONS and e.suffix.lower() != ".png")
    if images:
        out["images"] = images
        out["animated"] = [any(animated)]
    for key, value in ui.items():
        if key != "files":
            out[key] = value if isinstance(value, list) else [value]
    return out
