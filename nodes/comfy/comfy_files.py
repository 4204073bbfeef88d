"""File-name inputs of ComfyUI's nodes: a model file of one kind, or a file of the input folder.

Such an input is declared as a STRING widget named in the node's `FOLDER_INPUTS`
({input name: folder kind}); the server lists the folder as the COMBO's choices, and a node
given a bare name resolves it here at validation and at run time:

- model kinds (diffusion_models, text_encoders, vae, clip_vision, loras) through
  `nodes.wan.checkpoints.model_folders` (the models folder and extra_model_paths.yaml);
- "input": the input folder (`set_input_dir`, else $GRAPHRT_INPUT_DIR, else ./input), with
  ComfyUI's " [input]" / " [output]" / " [temp]" annotations dropped; a name that is not there is
  taken as a path (absolute, or relative to the current directory) so scripts can pass files.

The engine's Input enums are fixed when a class is defined, so the live file list is one call at
schema time: `cls.input_choices(name)` on a FileInputNode (`choices(kind)` underneath).
"""
from __future__ import annotations

import os
from pathlib import Path

from graphrt import Input, Node

from ..wan.checkpoints.model_folders import ModelFileNotFound, find_file, list_files

INPUT_DIR_ENV = "GRAPHRT_INPUT_DIR"
INPUT_FOLDER = "input"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v"})
_ANNOTATIONS = (" [input]", " [output]", " [temp]")

_input_dir: Path | None = None


def set_input_dir(path: str | os.PathLike | None) -> Path | None:
    """Use `path` as the input folder (None: back to $GRAPHRT_INPUT_DIR or ./input); returns the one before."""
    global _input_dir
    before, _input_dir = _input_dir, None if path is None else Path(os.path.expanduser(str(path)))
    return before


def input_dir() -> Path:
    if _input_dir is not None:
        return _input_dir
    env = os.environ.get(INPUT_DIR_ENV)
    return Path(os.path.expanduser(env)) if env else Path("input")


def input_files(extensions=IMAGE_EXTENSIONS | VIDEO_EXTENSIONS) -> list[str]:
    root = input_dir()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))


def find_input_file(name: str, what: str = "image") -> Path:
    """The input-folder file `name`, else `name` as a path; FileNotFoundError naming both."""
    if not isinstance(name, str) or not name.strip():
        raise FileNotFoundError(f"(empty) names no {what} file: {_input_inventory()}")
    plain = name
    for tag in _ANNOTATIONS:
        if plain.endswith(tag):
            plain = plain[:-len(tag)]
    rel = Path(plain.replace("\\", "/"))
    if not rel.is_absolute() and ".." not in rel.parts and (input_dir() / rel).is_file():
        return input_dir() / rel
    direct = Path(os.path.expanduser(plain))
    if direct.is_file():
        return direct
    raise FileNotFoundError(f"{name!r} is neither a file of the input folder nor a path: {_input_inventory()}")


def _input_inventory() -> str:
    files = input_files()
    have = ", ".join(files[:20]) + (f", ... ({len(files)} files)" if len(files) > 20 else "") if files else "none"
    return f"searched the input folder {input_dir().absolute()}; files there: {have}"


def choices(kind: str) -> list[str]:
    """The names a file input of `kind` offers: a model kind, or "input"."""
    return input_files() if kind == INPUT_FOLDER else list_files(kind)


def resolve(kind: str, name: str) -> Path:
    return find_input_file(name) if kind == INPUT_FOLDER else find_file(kind, name)


def file_input(name: str, kind: str, tooltip: str = "") -> Input:
    """A file-name widget of `kind` (list it in the node's FOLDER_INPUTS too)."""
    where = "the input folder" if kind == INPUT_FOLDER else f"the models folder's {kind}"
    return Input(name, "STRING", tooltip=(tooltip + " " if tooltip else "") + f"A file name from {where}.")


def check_files(folder_inputs: dict, values: dict) -> list[str]:
    """validate_inputs helper: one message per file input whose file cannot be found, starting
    with the input's name (so the error is attached to it)."""
    errors = []
    for input_name, kind in folder_inputs.items():
        value = values.get(input_name)
        if value is None:
            continue      # fed by a link or missing: reported elsewhere
        try:
            resolve(kind, value)
        except (ModelFileNotFound, FileNotFoundError) as e:
            errors.append(f"{input_name} {e}")
    return errors


def file_stamp(kind: str, name: str) -> str:
    """Cache-key material: the resolved file's name, size and mtime (weights are not hashed)."""
    try:
        p = resolve(kind, name)
    except (ModelFileNotFound, FileNotFoundError):
        return f"missing:{name}"
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class FileInputNode(Node):
    """A node with file-name inputs: `FOLDER_INPUTS` {input: kind} are checked before the run
    (a missing file lists the folders searched and their files) and key the cache by file stamp."""
    FOLDER_INPUTS: dict = {}
    INPUT_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS     # which input-folder files to offer

    @classmethod
    def validate_inputs(cls, **values):
        return check_files(cls.FOLDER_INPUTS, values) or None

    @classmethod
    def fingerprint(cls, **values):
        return "|".join(file_stamp(kind, values.get(name) or "") for name, kind in cls.FOLDER_INPUTS.items())

    @classmethod
    def input_choices(cls, name: str) -> list[str] | None:
        """The COMBO choices of file input `name` right now (None for other inputs): the hook a schema
        (`graphrt nodes`, /object_info) calls to list them when it is asked for."""
        kind = cls.FOLDER_INPUTS.get(name)
        if kind == INPUT_FOLDER:
            return input_files(cls.INPUT_EXTENSIONS)
        return None if kind is None else choices(kind)


__all__ = ["FileInputNode", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "INPUT_FOLDER", "set_input_dir", "input_dir",
           "find_input_file", "input_files", "choices", "resolve", "file_input", "check_files", "file_stamp"]
