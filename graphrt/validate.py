"""Semantic validation: classes, inputs, links, value types and ranges, node
validators, template parameters and cycles — every error at once, before anything runs."""
from __future__ import annotations

import difflib
import json
import math

import networkx as nx

from .errors import ValidationError
from .registry import get_node_class, node_names
from .types import ANY, Input
from .workflow import Workflow, is_link


def _repr(value, limit=60) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _suggest(name: str, choices) -> str:
    near = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


def types_match(produced: str, expected) -> bool:
    if isinstance(expected, list):  # an enum input fed by a link takes strings
        expected = "STRING,COMBO"
    if produced == ANY or expected == ANY:
        return True
    return bool(set(produced.split(",")) & set(expected.split(",")))


def check_value(inp: Input, value):
    """(coerced value, None) or (None, (expected, message))."""
    t = inp.type
    if inp.is_enum:
        if value in t:
            return value, None
        return None, (inp.describe(), f"{_repr(value)} is not one of the options" + (_suggest(str(value), t) if isinstance(value, str) else ""))
    if t == "BOOLEAN":
        if isinstance(value, bool):
            return value, None
        return None, ("BOOLEAN", f"expected true or false, received {_repr(value)}")
    if t == "STRING":
        if isinstance(value, str):
            return value, None
        return None, ("STRING", f"expected a string, received {_repr(value)}")
    if t in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, (inp.describe(), f"expected a number ({t}), received {_repr(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            return None, (inp.describe(), f"expected a finite number, received {value}")
        if t == "INT":
            if isinstance(value, float):
                if not value.is_integer():
                    return None, (inp.describe(), f"expected an integer, received {value}")
                value = int(value)
        else:
            value = float(value)
        if inp.min is not None and value < inp.min:
            return None, (inp.describe(), f"{value} is below the minimum {inp.min}")
        if inp.max is not None and value > inp.max:
            return None, (inp.describe(), f"{value} is above the maximum {inp.max}")
        return value, None
    return None, (inp.describe(), f"this input takes a link from a {t} output, received the constant {_repr(value)}")


def _param_input(spec: dict) -> Input:
    t = spec.get("type")
    return Input("param", t if isinstance(t, list) else str(t))


def apply_params(wf: Workflow, params: dict | None):
    """The workflow's node dict with parameter values written into their targets, plus errors."""
    # Constants are never mutated, so copying each node's inputs dict is enough.
    nodes = {nid: {**node, "inputs": dict(node.get("inputs") or {})} for nid, node in wf.nodes.items()}
    errors: list[ValidationError] = []
    declared = wf.params
    for name, spec in declared.items():
        for target in spec.get("targets", []):
            nid, inp = target
            if nid not in nodes:
                errors.append(ValidationError(nid, None, inp, "an existing node", nid,
                                              f"parameter '{name}' targets node {nid}, which does not exist"))
                continue
            cls = get_node_class(nodes[nid].get("class_type"))
            if cls is not None and inp not in cls.input_map():
                errors.append(ValidationError(nid, nodes[nid]["class_type"], inp, "an input of the node", inp,
                                              f"parameter '{name}' targets input '{inp}', which the node does not have"
                                              + _suggest(inp, cls.input_map())))
        if "default" in spec:
            _, err = check_value(_param_input(spec), spec["default"])
            if err:
                errors.append(ValidationError(None, None, None, err[0], _repr(spec["default"]),
                                              f"parameter '{name}': default {err[1]}"))
    for name, value in (params or {}).items():
        if name not in declared:
            errors.append(ValidationError(None, None, None, "a declared parameter", name,
                                          f"unknown parameter '{name}'{_suggest(name, declared)}; "
                                          f"declared: {', '.join(declared) or 'none'}"))
            continue
        value, err = check_value(_param_input(declared[name]), value)
        if err:
            errors.append(ValidationError(None, None, None, err[0], _repr(value), f"parameter '{name}': {err[1]}"))
            continue
        for nid, inp in declared[name].get("targets", []):
            if nid in nodes:
                nodes[nid].setdefault("inputs", {})[inp] = value
    return nodes, errors


def validate_nodes(nodes: dict) -> list[ValidationError]:
    errors: list[ValidationError] = []
    graph = nx.DiGraph()
    for nid, node in nodes.items():
        ctype = node.get("class_type")
        cls = get_node_class(ctype)
        graph.add_node(nid)
        if cls is None:
            errors.append(ValidationError(nid, ctype, None, "a registered node type", str(ctype),
                                          f"unknown node type '{ctype}'{_suggest(str(ctype), node_names())}"))
            continue
        spec = cls.input_map()
        inputs = node.setdefault("inputs", {})
        constants, node_ok = {}, True
        for name, value in inputs.items():
            inp = spec.get(name)
            if inp is None:
                errors.append(ValidationError(nid, ctype, name, "one of " + ", ".join(spec) if spec else "no inputs",
                                              name, f"unknown input '{name}'{_suggest(name, spec)}"))
                node_ok = False
                continue
            if is_link(value):
                src, slot = str(value[0]), value[1]
                src_node = nodes.get(src)
                if src_node is None:
                    errors.append(ValidationError(nid, ctype, name, "a link to an existing node", _repr(value),
                                                  f"links to node {src}, which does not exist"))
                    node_ok = False
                    continue
                src_cls = get_node_class(src_node.get("class_type"))
                graph.add_edge(src, nid)
                if src_cls is None:
                    continue
                if not 0 <= slot < len(src_cls.OUTPUTS):
                    errors.append(ValidationError(
                        nid, ctype, name, f"an output index of node {src} (0..{len(src_cls.OUTPUTS) - 1})",
                        str(slot), f"node {src} ({src_cls.class_name()}) has no output {slot}"))
                    node_ok = False
                    continue
                produced = src_cls.OUTPUTS[slot].type
                if not types_match(produced, inp.type):
                    errors.append(ValidationError(nid, ctype, name, inp.type_name, produced,
                                                  f"expects {inp.type_name}, but node {src} output {slot} "
                                                  f"({src_cls.OUTPUTS[slot].name}) gives {produced}"))
                    node_ok = False
            elif isinstance(value, list) and len(value) == 2 and not inp.is_value:
                errors.append(ValidationError(nid, ctype, name, "[node_id, output_index]", _repr(value),
                                              "a link must be [node_id (string), output_index (integer)]"))
                node_ok = False
            else:
                coerced, err = check_value(inp, value)
                if err:
                    errors.append(ValidationError(nid, ctype, name, err[0], _repr(value), err[1]))
                    node_ok = False
                else:
                    constants[name] = coerced
        for inp in cls.INPUTS:
            if inp.name not in inputs and not inp.optional and inp.is_value and inp.default is not None:
                inputs[inp.name] = constants[inp.name] = inp.default   # widgets may be omitted: default applies
                continue
            if not inp.optional and inp.name not in inputs:
                errors.append(ValidationError(nid, ctype, inp.name, inp.describe(), "nothing",
                                              f"required input '{inp.name}' is missing"))
                node_ok = False
        validator = getattr(cls, "validate_inputs", None)
        if node_ok and validator is not None:
            args = {i.name: i.default for i in cls.INPUTS if i.is_value and i.default is not None}
            args.update(constants)
            try:
                result = validator(**args)
            except Exception as e:  # a validator bug must not crash validation
                result = f"validator raised {type(e).__name__}: {e}"
            if result not in (None, True):
                for msg in ([result] if isinstance(result, str) else list(result)):
                    field = next((n for n in spec if str(msg).startswith(n + " ") or f"'{n}'" in str(msg)), None)
                    errors.append(ValidationError(nid, ctype, field, "a valid combination",
                                                  _repr(constants.get(field)) if field else "", str(msg)))
    cycle = None
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
    if cycle:
        ids = [a for a, _ in cycle]
        errors.append(ValidationError(ids[0], nodes.get(ids[0], {}).get("class_type"), None, "an acyclic graph",
                                      " -> ".join(ids + [ids[0]]),
                                      f"cycle through nodes {' -> '.join(ids + [ids[0]])}"))
    return errors


def validate(wf: Workflow, params: dict | None = None) -> list[ValidationError]:
    """Every error of `wf` (with `params` applied); [] when it can run."""
    nodes, errors = apply_params(wf, params)
    return errors + validate_nodes(nodes)
