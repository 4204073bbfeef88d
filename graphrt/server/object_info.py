"""Node schemas in ComfyUI's /object_info format, derived from the registry's Input/Output specs.

A node type may name, per input, a folder whose files the user picks from:
`FOLDER_INPUTS = {"input_name": "loras"}` (a models subfolder such as diffusion_models,
vae, text_encoders, loras, clip_vision, diffusers) or "input" (the uploads folder). Such an
input is shown as a COMBO of the folder's files (its default first), and the server
passes the chosen file's full path to the node.
"""
from __future__ import annotations

from ..registry import get_node_class, live_choices, node_names
from ..types import Input, Node

INPUT_FOLDER = "input"


def folder_inputs(cls: type[Node]) -> dict[str, str]:
    value = getattr(cls, "FOLDER_INPUTS", None)
    return dict(value) if isinstance(value, dict) else {}


def input_spec(inp: Input, choices: list | None = None) -> list:
    """One input as ComfyUI's [type, options]."""
    opts = {}
    for key in ("default", "min", "max", "step"):
        value = getattr(inp, key)
        if value is not None:
            opts[key] = value
    if inp.tooltip:
        opts["tooltip"] = inp.tooltip
    if inp.lazy:
        opts["lazy"] = True
    if inp.type == "STRING":
        opts["multiline"] = bool(inp.multiline)
    if inp.control_after_generate:
        opts["control_after_generate"] = True
    if inp.type == "FLOAT" and "step" in opts:
        opts["round"] = False            # keep the exact values the node declares
    if choices is not None:
        first = [inp.default] if isinstance(inp.default, str) and inp.default not in choices else []
        return [first + list(choices), {k: v for k, v in opts.items() if k in ("default", "tooltip")}]
    if inp.is_enum:
        return [list(inp.type), {k: v for k, v in opts.items() if k in ("default", "tooltip", "lazy")}]
    if not inp.is_value:
        return [inp.type, {k: v for k, v in opts.items() if k in ("tooltip", "lazy")}]
    return [inp.type, opts]


def node_info(cls: type[Node], list_folder=None) -> dict:
    """`list_folder(folder) -> [names]` supplies the choices of FOLDER_INPUTS."""
    folders = folder_inputs(cls)
    required, optional = {}, {}
    for inp in cls.INPUTS:
        choices = live_choices(cls, inp.name)       # the node lists its own files (extra paths included)
        if choices is None and inp.name in folders and list_folder is not None:
            choices = list_folder(folders[inp.name])
        spec = input_spec(inp, choices)
        if folders.get(inp.name) == INPUT_FOLDER:
            spec[1]["image_upload"] = True
        (optional if inp.optional else required)[inp.name] = spec
    name = cls.class_name()
    return {
        "input": {"required": required, "optional": optional},
        "input_order": {"required": list(required), "optional": list(optional)},
        "output": [o.type for o in cls.OUTPUTS],
        "output_is_list": [False] * len(cls.OUTPUTS),
        "output_name": [o.name for o in cls.OUTPUTS],
        "output_tooltips": [o.tooltip for o in cls.OUTPUTS],
        "name": name,
        "display_name": cls.DISPLAY_NAME or name,
        "description": cls.DESCRIPTION or "",
        "python_module": cls.__module__,
        "category": cls.CATEGORY or "graphrt",
        "output_node": bool(cls.OUTPUT_NODE),
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    }


def all_node_info(list_folder=None) -> dict:
    return {name: node_info(get_node_class(name), list_folder) for name in node_names()}
