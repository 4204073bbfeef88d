"""A posted prompt checked the way ComfyUI's /prompt does: errors in its
`node_errors` shape, outputs whose graphs are broken dropped, the rest runnable."""
from __future__ import annotations

from ..errors import ValidationError, WorkflowError
from ..registry import get_node_class
from ..validate import validate
from ..workflow import Workflow, is_link
from .object_info import INPUT_FOLDER, folder_inputs, input_spec
from .files import split_annotation

# (phrase in graphrt's message, ComfyUI error type, ComfyUI's short message)
_KINDS = [
    ("is missing", "required_input_missing", "Required input is missing"),
    ("below the minimum", "value_smaller_than_min", "Value smaller than min"),
    ("above the maximum", "value_bigger_than_max", "Value bigger than max"),
    ("is not one of the options", "value_not_in_list", "Value not in list"),
    ("expects ", "return_type_mismatch", "Return type mismatch between linked nodes"),
    ("links to node", "bad_linked_input", "Bad linked input"),
    ("has no output", "bad_linked_input", "Bad linked input"),
    ("a link must be", "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]"),
    ("unknown input", "unknown_input", "Input not declared by the node"),
    ("cycle through", "dependency_cycle", "Dependency cycle detected"),
    ("expected ", "invalid_input_type", "Failed to convert an input value"),
    ("takes a link", "invalid_input_type", "Input needs a link"),
]


def _error(type_, message, details, **extra) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


def comfy_error(err: ValidationError, prompt: dict) -> dict:
    text = err.message
    type_, short = "custom_validation_failed", "Failed custom validation"
    if err.expected != "a valid combination":
        for phrase, t, m in _KINDS:
            if phrase in text:
                type_, short = t, m
                break
        else:
            type_, short = "invalid_input", "Invalid input"
    extra = {}
    if err.input:
        extra["input_name"] = err.input
        cls = get_node_class(err.class_type) if err.class_type else None
        inp = cls.input_map().get(err.input) if cls else None
        if inp is not None:
            extra["input_config"] = input_spec(inp)
        node = prompt.get(err.node_id) if isinstance(prompt, dict) else None
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict) and err.input in node["inputs"]:
            extra["received_value"] = node["inputs"][err.input]
    return _error(type_, short, str(err), **extra)


def _unwrap(prompt: dict) -> dict:
    """A copy with ComfyUI's {"__value__": [...]} list wrappers unwrapped."""
    out = {}
    for nid, node in prompt.items():
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            inputs = {k: (v["__value__"] if isinstance(v, dict) and set(v) == {"__value__"} else v)
                      for k, v in node["inputs"].items()}
            node = {**node, "inputs": inputs}
        out[str(nid)] = node
    return out


def ancestors(prompt: dict, start) -> set:
    seen, stack = set(), [str(s) for s in start]
    while stack:
        nid = stack.pop()
        if nid in seen or nid not in prompt:
            continue
        seen.add(nid)
        inputs = prompt[nid].get("inputs") if isinstance(prompt[nid], dict) else None
        for v in (inputs or {}).values() if isinstance(inputs, dict) else ():
            if is_link(v):
                stack.append(str(v[0]))
    return seen


def check_prompt(prompt, partial_targets=None, resolve=None):
    """(ok, error, outputs_to_execute, node_errors, prompt) as ComfyUI's validate_prompt gives them;
    folder inputs are checked as `resolve` (see `resolve_inputs`) will give them to the nodes."""
    if not isinstance(prompt, dict) or not prompt:
        return False, _error("invalid_prompt", "The prompt must be a JSON object of nodes",
                             f"got {type(prompt).__name__}"), [], {}, prompt
    prompt = _unwrap(prompt)
    outputs = []
    for nid, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return False, _error("invalid_prompt",
                                 "Cannot execute because a node is missing the class_type property.",
                                 f"Node ID '#{nid}'"), [], {}, prompt
        cls = get_node_class(node["class_type"])
        if cls is None:
            return False, _error("invalid_prompt",
                                 f"Cannot execute because node {node['class_type']} does not exist.",
                                 f"Node ID '#{nid}'"), [], {}, prompt
        if cls.OUTPUT_NODE and (partial_targets is None or nid in [str(t) for t in partial_targets]):
            outputs.append(nid)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}, prompt
    try:
        errors = validate(Workflow.from_dict(resolve_inputs(prompt, resolve) if resolve else prompt))
    except WorkflowError as e:
        errors = e.errors
    node_errors, general = {}, []
    if resolve is not None:
        errors = errors + _folder_errors(prompt, resolve)
    for err in errors:
        if err.node_id is None or err.node_id not in prompt:
            general.append(err)
            continue
        entry = node_errors.setdefault(err.node_id, {"errors": [], "dependent_outputs": [],
                                                     "class_type": prompt[err.node_id]["class_type"]})
        entry["errors"].append(comfy_error(err, prompt))
    if general:
        return False, _error("invalid_prompt", "Invalid prompt", "; ".join(map(str, general))), [], node_errors, \
            prompt
    good = []
    for o in outputs:
        bad = ancestors(prompt, [o]) & set(node_errors)
        for nid in bad:
            node_errors[nid]["dependent_outputs"].append(o)
        if not bad:
            good.append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for ne in node_errors.values() for e in ne["errors"])
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), \
            [], node_errors, prompt
    return True, None, good, node_errors, prompt


def _server_folders(cls) -> dict:
    """The folder inputs the server checks and resolves: those of nodes that do not list and
    resolve their own files (`input_choices`: their validate_inputs and execute take the name)."""
    if cls is None or callable(getattr(cls, "input_choices", None)):
        return {}
    return folder_inputs(cls)


def _folder_errors(prompt: dict, resolve) -> list[ValidationError]:
    """A folder input takes one of its folder's files (or its declared default), like a COMBO."""
    errors = []
    for nid, node in prompt.items():
        cls = get_node_class(node.get("class_type"))
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        for name, folder in _server_folders(cls).items():
            value = inputs.get(name)
            if not isinstance(value, str) or value == cls.input_map()[name].default:
                continue
            plain, annotated = split_annotation(value) if folder == INPUT_FOLDER else (value, None)
            if resolve(annotated or folder, plain) is None:
                errors.append(ValidationError(nid, cls.class_name(), name, f"a file of the {folder} folder",
                                              value, f"{value!r} is not one of the options (the files of the "
                                                     f"'{folder}' folder)"))
    return errors


def resolve_inputs(prompt: dict, resolve) -> dict:
    """A copy where each FOLDER_INPUTS value naming a file of its folder becomes that file's
    full path, by `resolve(folder, name) -> path | None`."""
    nodes = {}
    for nid, node in prompt.items():
        cls = get_node_class(node.get("class_type")) if isinstance(node, dict) else None
        folders = _server_folders(cls)
        if folders and isinstance(node.get("inputs"), dict):
            inputs = dict(node["inputs"])
            for name, folder in folders.items():
                value = inputs.get(name)
                if isinstance(value, str) and value:
                    plain, annotated = split_annotation(value) if folder == INPUT_FOLDER else (value, None)
                    path = resolve(annotated or folder, plain)
                    if path is not None:
                        inputs[name] = str(path)
            node = {**node, "inputs": inputs}
        nodes[nid] = node
    return nodes


def runnable(prompt: dict, outputs: list, resolve) -> dict:
    """The nodes the outputs need, folder inputs resolved."""
    keep = ancestors(prompt, outputs)
    return resolve_inputs({nid: node for nid, node in prompt.items() if nid in keep}, resolve)
