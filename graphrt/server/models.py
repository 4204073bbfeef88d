"""The models folder, laid out as ComfyUI's: one subfolder per kind of model."""
from __future__ import annotations

import os
from pathlib import Path

from .files import UnsafePath, safe_path

MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf"}
# ComfyUI's folder names, each with the subfolders it reads (the first is created).
FOLDERS = {
    "checkpoints": ["checkpoints"], "loras": ["loras"], "vae": ["vae"],
    "text_encoders": ["text_encoders", "clip"], "diffusion_models": ["diffusion_models", "unet"],
    "clip_vision": ["clip_vision"], "style_models": ["style_models"], "embeddings": ["embeddings"],
    "diffusers": ["diffusers"], "vae_approx": ["vae_approx"], "controlnet": ["controlnet", "t2i_adapter"],
    "gligen": ["gligen"], "upscale_models": ["upscale_models"], "hypernetworks": ["hypernetworks"],
    "photomaker": ["photomaker"], "classifiers": ["classifiers"], "model_patches": ["model_patches"],
    "audio_encoders": ["audio_encoders"],
}


class ModelFolders:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def create(self) -> None:
        for subdirs in FOLDERS.values():
            (self.root / subdirs[0]).mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return list(FOLDERS)

    def paths(self, folder: str) -> list[Path]:
        return [(self.root / d).resolve() for d in FOLDERS[folder]]

    def files(self, folder: str) -> list[str]:
        """Relative names ('sub/x.safetensors'), sorted; for 'diffusers', the folders holding
        a model_index.json."""
        out = set()
        for base in self.paths(folder):
            if not base.is_dir():
                continue
            if folder == "diffusers":
                out.update(p.parent.relative_to(base).as_posix() for p in base.rglob("model_index.json"))
                continue
            for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for f in filenames:
                    if Path(f).suffix.lower() in MODEL_EXTENSIONS:
                        out.add((Path(dirpath) / f).relative_to(base).as_posix())
        return sorted(out, key=str.lower)

    def resolve(self, folder: str, name: str) -> Path | None:
        """The file `name` of `folder`, or None if it is not one of its entries."""
        if folder not in FOLDERS or not isinstance(name, str) or not name:
            return None
        for base in self.paths(folder):
            try:
                p = safe_path(base, "", name)
            except UnsafePath:
                return None
            if p.exists():
                return p
        return None
