"""ComfyUI's models folder: where a file name such as `wan_2.1_vae.safetensors` is looked up.

ComfyUI's loader nodes take a file *name* (the COMBO shows the files of one kind of model) and
search it in that kind's folders, in order (its folder_paths.py):

    diffusion_models   <models>/unet, <models>/diffusion_models
    text_encoders      <models>/text_encoders, <models>/clip
    vae, clip_vision, loras, ...   <models>/<name>

then in the folders an `extra_model_paths.yaml` adds (its utils/extra_config.py: one section per
install, an optional `base_path` that relative paths are joined to, `is_default` to search that
section first, and per kind one path or several on separate lines; `unet` and `clip` are the
legacy names of diffusion_models and text_encoders).

`<models>` is `set_models_dir(path)` if called, else `$GRAPHRT_MODELS_DIR` (set by the CLI and
the server for `--models-dir`), else `./models` of the current directory. Extra-path files come
from `add_extra_model_paths(yaml)` and `$GRAPHRT_EXTRA_MODEL_PATHS` (paths joined by os.pathsep).
Everything is looked up at call time, so a file copied in while the program runs is found.
"""
from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR_ENV = "GRAPHRT_MODELS_DIR"
EXTRA_PATHS_ENV = "GRAPHRT_EXTRA_MODEL_PATHS"
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf"})

# ComfyUI's folder names and the subfolders of the models folder each one searches, in its order.
SUBFOLDERS = {
    "diffusion_models": ("unet", "diffusion_models"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "clip_vision": ("clip_vision",),
    "loras": ("loras",),
    "checkpoints": ("checkpoints",),
    "embeddings": ("embeddings",),
    "upscale_models": ("upscale_models",),
}
LEGACY_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}

_models_dir: Path | None = None
_extra_yaml: list[Path] = []


class ModelFileNotFound(FileNotFoundError):
    """A file name that none of its kind's folders holds; the message lists where and what is there."""


def set_models_dir(path: str | os.PathLike | None) -> Path | None:
    """Use `path` as the models folder (None: back to $GRAPHRT_MODELS_DIR or ./models); returns the
    folder set before (or None), so a caller can put it back."""
    global _models_dir
    before, _models_dir = _models_dir, None if path is None else Path(os.path.expanduser(str(path)))
    return before


def models_dir() -> Path:
    if _models_dir is not None:
        return _models_dir
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(os.path.expanduser(env)) if env else Path("models")


def add_extra_model_paths(yaml_path: str | os.PathLike) -> None:
    """Search the folders of this `extra_model_paths.yaml` too (read at each lookup)."""
    p = Path(os.path.expanduser(str(yaml_path)))
    if not p.is_file():
        raise FileNotFoundError(f"extra model paths file not found: {p}")
    if p not in _extra_yaml:
        _extra_yaml.append(p)


def clear_extra_model_paths() -> None:
    _extra_yaml.clear()


def read_extra_model_paths(yaml_path: str | os.PathLike) -> list[tuple[str, Path, bool]]:
    """(folder kind, folder, is_default) for every entry of an extra_model_paths.yaml."""
    import yaml
    yaml_path = Path(yaml_path)
    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{yaml_path} is not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{yaml_path}: expected sections (name: {{base_path: ..., vae: ...}}), "
                         f"got {type(config).__name__}")
    here = yaml_path.resolve().parent
    out = []
    for section, conf in config.items():
        if conf is None:
            continue
        if not isinstance(conf, dict):
            raise ValueError(f"{yaml_path}: section '{section}' must map folder kinds to paths")
        conf = dict(conf)
        base = conf.pop("base_path", None)
        if base is not None:
            base = Path(os.path.expandvars(os.path.expanduser(str(base))))
            base = base if base.is_absolute() else here / base
        is_default = bool(conf.pop("is_default", False))
        for kind, value in conf.items():
            for line in str(value).split("\n"):
                line = line.strip()
                if not line:
                    continue
                path = Path(line)
                path = base / path if base is not None else (path if path.is_absolute() else here / path)
                out.append((LEGACY_NAMES.get(kind, kind), Path(os.path.normpath(path)), is_default))
    return out


def _extra_files() -> list[Path]:
    env = [Path(os.path.expanduser(p)) for p in os.environ.get(EXTRA_PATHS_ENV, "").split(os.pathsep) if p]
    return list(_extra_yaml) + [p for p in env if p not in _extra_yaml]


def folder_paths(kind: str) -> list[Path]:
    """Every folder searched for `kind` (e.g. "vae"), in search order."""
    kind = LEGACY_NAMES.get(kind, kind)
    if kind not in SUBFOLDERS:
        raise ValueError(f"unknown model folder kind {kind!r}; one of {sorted(SUBFOLDERS)}")
    root = models_dir().absolute()
    first, own, last = [], [root / sub for sub in SUBFOLDERS[kind]], []
    for yaml_file in _extra_files():
        for k, path, is_default in read_extra_model_paths(yaml_file):
            if k == kind:
                (first if is_default else last).append(path)
    seen, out = set(), []
    for p in first + own + last:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def list_files(kind: str) -> list[str]:
    """The model files of `kind`, as the names its loader takes ('sub/x.safetensors'), sorted."""
    names = set()
    for base in folder_paths(kind):
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in filenames:
                if Path(f).suffix.lower() in MODEL_EXTENSIONS:
                    names.add((Path(dirpath) / f).relative_to(base).as_posix())
    return sorted(names)


def find_file(kind: str, name: str) -> Path:
    """The file `name` of `kind` (first folder that has it); an existing absolute path is taken
    as is, for scripts. Raises ModelFileNotFound naming the folders searched and their files."""
    if not isinstance(name, str) or not name.strip():
        raise ModelFileNotFound(f"(empty) names no file of {kind}: {_inventory(kind)}")
    direct = Path(os.path.expanduser(name))
    if direct.is_absolute():
        if direct.is_file():
            return direct
        raise ModelFileNotFound(f"{name!r}: no such file")
    rel = Path(name.replace("\\", "/"))
    if ".." in rel.parts:
        raise ModelFileNotFound(f"{name!r} may not leave the {kind} folder")
    for base in folder_paths(kind):
        p = base / rel
        if p.is_file():
            return p
    raise ModelFileNotFound(f"{name!r} is not in {kind}: {_inventory(kind)}")


def _inventory(kind: str) -> str:
    folders = folder_paths(kind)
    files = list_files(kind)
    where = ", ".join(str(p) for p in folders)
    have = ", ".join(files[:20]) + (f", ... ({len(files)} files)" if len(files) > 20 else "") if files else "none"
    return f"searched {where}; files there: {have}"
