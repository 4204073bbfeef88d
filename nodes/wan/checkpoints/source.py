"""Where a model comes from, resolved once into a `Source` that every loader takes.

A source is what a user writes: `tiny` (the built-in preset), a local pipeline folder, one
checkpoint file, or a hub repo id ("owner/name"). `as_source` turns it into a `Source` once;
loaders then ask it for a component's folder (`component("vae")`), so a hub repo is fetched
component by component (only the folders asked for, plus model_index.json) and a path is
checked once, with an error that names what is there.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .safetensors_io import CheckpointError

PRESET, FOLDER, FILE, HUB = "preset", "folder", "file", "hub"


@dataclass(eq=False)
class Source:
    spec: str                      # as the user wrote it
    kind: str                      # PRESET | FOLDER | FILE | HUB
    path: Path | None = None       # the local folder or file (HUB: the whole snapshot once fetched)
    repo: str | None = None        # HUB: the repo id
    _fetched: dict = field(default_factory=dict, repr=False)

    @property
    def is_file(self) -> bool:
        return self.kind == FILE

    def root(self) -> Path:
        """The whole pipeline folder (a hub repo is fetched whole) or the file."""
        if self.path is None:
            self.path = Path(_hub_snapshot(self.repo, None))
        return self.path

    def component(self, subfolder: str | None) -> Path:
        """A component's folder (`subfolder` of a pipeline), or the file itself for a file source."""
        if self.kind == FILE or not subfolder:
            return self.path if self.kind == FILE else self.root()
        if self.kind == HUB and self.path is None:
            if subfolder not in self._fetched:
                self._fetched[subfolder] = Path(_hub_snapshot(self.repo, subfolder)) / subfolder
            return self._fetched[subfolder]
        q = self.root() / subfolder
        if not q.exists():
            raise FileNotFoundError(f"{self.root()} has no '{subfolder}' folder; subfolders present: "
                                    f"{sorted(x.name for x in self.root().iterdir() if x.is_dir())}")
        return q

    def has_component(self, subfolder: str) -> bool:
        if self.kind == FILE:
            return False
        if self.kind == HUB and self.path is None:     # model_index.json says, without fetching the rest
            entry = self.model_index().get(subfolder)
            return isinstance(entry, list) and bool(entry) and entry[0] is not None
        return (self.root() / subfolder).is_dir()

    def model_index(self) -> dict:
        """model_index.json of a pipeline (its boundary_ratio, expand_timesteps), or {}."""
        if self.kind == FILE:
            return {}
        root = self.root() if self.kind != HUB or self.path is not None else Path(_hub_snapshot(self.repo, "-"))
        return read_config(root, "model_index.json") if (root / "model_index.json").exists() else {}

    def __str__(self):
        return self.spec


def as_source(spec) -> Source:
    """`spec` (a Source, `tiny`, a folder, a file or a hub repo id) resolved; raises FileNotFoundError
    naming the path when it is neither an existing path nor a repo id."""
    if isinstance(spec, Source):
        return spec
    s = str(spec)
    if s == "tiny":
        from .presets import tiny_pipeline_path
        return Source(s, PRESET, tiny_pipeline_path())
    p = Path(os.path.expanduser(s))
    if p.exists():
        return Source(s, FILE if p.is_file() else FOLDER, p)
    if s.count("/") != 1 or s.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no such file or folder: {s}")
    return Source(s, HUB, repo=s)


def resolve(spec, subfolder: str | None = None) -> Path:
    """The local folder (or file) of one component of `spec`."""
    return as_source(spec).component(subfolder)


def _hub_snapshot(repo_id: str, subfolder: str | None) -> str:
    """A snapshot of `repo_id` in huggingface_hub's cache with model_index.json and `subfolder`
    (None: everything; "-": nothing else)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["model_index.json"] + ([] if subfolder == "-" else [f"{subfolder}/*"] if subfolder else ["*"])
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except LocalEntryNotFoundError:
        where = f" --include '{subfolder}/*'" if subfolder and subfolder != "-" else ""
        raise FileNotFoundError(
            f"{repo_id}{'/' + subfolder if subfolder and subfolder != '-' else ''} is not in the Hugging Face "
            f"cache and the hub cannot be reached (offline). Fetch it on a connected machine with "
            f"`huggingface-cli download {repo_id}{where}`, or pass a local folder.") from None
    except Exception as e:  # repo missing, gated, network refused, ...
        raise FileNotFoundError(f"could not get {repo_id} ({subfolder or 'all'}) from the hub: {e}") from None


def read_config(folder: Path, name: str = "config.json") -> dict:
    path = Path(folder) / name
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {name}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def config_from(spec, subfolder: str | None) -> dict:
    """A model config given as a dict, a config.json path, a component or pipeline folder, or a hub
    repo id (its `subfolder`/config.json), as diffusers' `from_single_file(config=...)` takes it."""
    if isinstance(spec, dict):
        return spec
    p = Path(os.path.expanduser(str(spec)))
    if p.is_file():
        return read_config(p.parent, p.name)
    if p.is_dir():
        for folder in ([p / subfolder] if subfolder else []) + [p]:
            if (folder / "config.json").exists():
                return read_config(folder)
        raise FileNotFoundError(f"config {spec}: neither {subfolder}/config.json nor config.json is in that folder")
    try:
        return read_config(as_source(spec).component(subfolder))
    except FileNotFoundError as e:   # neither a path nor a reachable repo: say it was the config
        raise FileNotFoundError(f"config {spec}: {e}") from None
