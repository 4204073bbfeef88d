"""The node type registry and node-pack discovery (entry-point group `graphrt.nodes`)."""
from __future__ import annotations

import importlib
import inspect
import warnings
from importlib.metadata import entry_points

from .types import Input, Node, Output

ENTRY_POINT_GROUP = "graphrt.nodes"
_REGISTRY: dict[str, type[Node]] = {}
_PACKS_LOADED = False
PACK_ERRORS: dict[str, str] = {}
_VERSION = 0


def register_node(cls: type[Node]) -> type[Node]:
    """Register a Node subclass (usable as a decorator). Re-registering the same class is a no-op."""
    if not (inspect.isclass(cls) and issubclass(cls, Node)):
        raise TypeError(f"register_node expects a graphrt.Node subclass, got {cls!r}")
    name = cls.class_name()
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and \
            (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"node type {name!r} is already registered by {existing.__module__}")
    for i in cls.INPUTS:
        if not isinstance(i, Input):
            raise TypeError(f"{name}.INPUTS must hold graphrt.Input objects, got {i!r}")
    for o in cls.OUTPUTS:
        if not isinstance(o, Output):
            raise TypeError(f"{name}.OUTPUTS must hold graphrt.Output objects, got {o!r}")
    _REGISTRY[name] = cls
    global _VERSION
    _VERSION += 1
    return cls


def unregister_node(name: str) -> None:
    global _VERSION
    _REGISTRY.pop(name, None)
    _VERSION += 1


def registry_version() -> int:
    """Changes whenever a node type is (un)registered, so cached plans are redone."""
    return _VERSION


def get_node_class(name: str) -> type[Node] | None:
    return _REGISTRY.get(name)


def node_names() -> list[str]:
    return sorted(_REGISTRY)


def load_node_packs() -> dict[str, str]:
    """Import every installed node pack once; returns {pack: error} for those that failed."""
    global _PACKS_LOADED
    if _PACKS_LOADED:
        return PACK_ERRORS
    _PACKS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken pack must not take the others down
            PACK_ERRORS[ep.name] = f"{type(e).__name__}: {e}"
            warnings.warn(f"graphrt: node pack {ep.name!r} ({ep.value}) failed to load: {e}")
    return PACK_ERRORS


def import_module_nodes(module: str) -> None:
    importlib.import_module(module)


def live_choices(cls: type[Node], name: str) -> list | None:
    """The choices a node computes when asked (`cls.input_choices(name)`, e.g. the files of a folder),
    or None where it computes none: enums are fixed when a class is defined, folders change."""
    fn = getattr(cls, "input_choices", None)
    return fn(name) if callable(fn) else None


def _input_schema(cls: type[Node], i) -> list:
    choices = live_choices(cls, i.name)
    if choices is None:
        return [i.type_name, i.options()]
    return ["COMBO", {**{k: v for k, v in i.options().items() if k in ("default", "tooltip")}, "options": choices}]


def node_schema(cls: type[Node]) -> dict:
    """A node type's schema, modelled on ComfyUI's /object_info."""
    required = {i.name: _input_schema(cls, i) for i in cls.INPUTS if not i.optional}
    optional = {i.name: _input_schema(cls, i) for i in cls.INPUTS if i.optional}
    return {
        "name": cls.class_name(),
        "display_name": cls.DISPLAY_NAME or cls.class_name(),
        "description": cls.DESCRIPTION,
        "category": cls.CATEGORY,
        "python_module": cls.__module__,
        "input": {"required": required, "optional": optional},
        "input_order": {"required": list(required), "optional": list(optional)},
        "output": [o.type for o in cls.OUTPUTS],
        "output_name": [o.name for o in cls.OUTPUTS],
        "output_tooltips": [o.tooltip for o in cls.OUTPUTS],
        "output_node": bool(cls.OUTPUT_NODE),
        "always_run": bool(cls.ALWAYS_RUN),
    }


def all_schemas() -> dict:
    return {name: node_schema(_REGISTRY[name]) for name in node_names()}
