"""Import of UI-format workflows (what a litegraph / ComfyUI-style editor saves) into the API format.

A UI file keeps nodes with positional `widgets_values` and links as
`[link_id, origin_id, origin_slot, target_id, target_slot, type]` (or objects
with those fields). The API format names every input, so the conversion needs
the node registry for the order of each node type's widget inputs. As the
editor's own export does, it:

- fills widget inputs in schema order, skipping the editor-only value that
  follows a seed widget (`control_after_generate`: "randomize", "fixed", ...);
- follows links through `Reroute` nodes and through bypassed nodes (mode 4: the
  bypassed node's input of the same type stands in for its output);
- drops muted nodes (mode 2) and notes, and pushes a legacy `PrimitiveNode`'s
  value into the widgets it feeds;
- keeps each node's title as `_meta.title`.

Subgraphs (`definitions.subgraphs`) are inlined first (`subgraphs.flatten`): their
nodes get ids such as "12:3", instance id then inner id, as the editor's own export does.
"""
from __future__ import annotations

from .errors import ValidationError, WorkflowError
from .registry import get_node_class
from .subgraphs import flatten, has_subgraphs
from .ui_links import BYPASS, MUTED, link_rows

NOTES = ("Note", "MarkdownNote")
SEED_CONTROL = ("randomize", "fixed", "increment", "decrement")
SEED_NAMES = ("seed", "noise_seed")


def is_ui_format(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _id_order(node_id):
    """Numeric order of node ids, including subgraph paths such as "12:3"."""
    return tuple(int(p) if p.lstrip("-").isdigit() else 0 for p in str(node_id).split(":"))


def ui_to_api(data: dict, source: str | None = None) -> dict:
    """The API-format dict of a UI-format workflow; raises WorkflowError naming each bad node."""
    if has_subgraphs(data):
        data = flatten(data, source)
    nodes = {n["id"]: n for n in data["nodes"]}
    links = link_rows(data.get("links"))
    errors: list[ValidationError] = []

    def resolve(link_id, seen=()):
        """(origin node id, slot) behind a link, through reroutes and bypassed nodes; None if nothing."""
        if link_id is None or link_id not in links or link_id in seen:
            return None
        origin, slot, _, _, ltype = links[link_id]
        node = nodes.get(origin)
        if node is None:
            return None
        if node.get("type") == "Reroute" or node.get("mode") == BYPASS:
            ins = [i for i in node.get("inputs") or [] if i.get("link") is not None]
            if node.get("type") != "Reroute":   # bypass: the input of the output's type, else the same slot
                out_type = (node.get("outputs") or [{}] * (slot + 1))[slot].get("type", ltype)
                same = [i for i in ins if i.get("type") == out_type]
                ins = same or [i for k, i in enumerate(node.get("inputs") or []) if k == slot and i.get("link")]
            return resolve(ins[0]["link"], seen + (link_id,)) if ins else None
        if node.get("mode") == MUTED or node.get("type") in NOTES or node.get("type") == "PrimitiveNode":
            return None   # a PrimitiveNode's value was pushed into the widget it feeds
        return str(origin), slot

    primitive_values = {}   # (target node, input name) -> value of a legacy PrimitiveNode
    for node in nodes.values():
        if node.get("type") == "PrimitiveNode" and node.get("widgets_values"):
            for out in node.get("outputs") or []:
                for lid in out.get("links") or []:
                    if lid in links:
                        target = nodes.get(links[lid][2])
                        slot = links[lid][3]
                        if target is not None and slot < len(target.get("inputs") or []):
                            widget = target["inputs"][slot].get("widget", {}).get("name")
                            if widget:
                                primitive_values[(target["id"], widget)] = node["widgets_values"][0]

    api = {}
    for node in sorted(nodes.values(), key=lambda n: _id_order(n["id"])):
        kind = node.get("type")
        if kind in NOTES or kind in ("Reroute", "PrimitiveNode") or node.get("mode") in (MUTED, BYPASS):
            continue
        nid = str(node["id"])
        cls = get_node_class(kind)
        if cls is None:
            errors.append(ValidationError(nid, kind, None, "a registered node type", repr(kind),
                                          f"unknown node type {kind!r}; load its node pack (--nodes) first"))
            continue
        inputs = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):   # some editors save widgets by name
            inputs.update(node["widgets_values"])
            values = []
        pos = 0
        for inp in cls.INPUTS:
            if not inp.is_value or not values:
                continue
            if pos >= len(values):
                break
            inputs[inp.name] = values[pos]
            pos += 1
            has_control = inp.control_after_generate or (inp.type == "INT" and inp.name in SEED_NAMES)
            if has_control and pos < len(values) and values[pos] in SEED_CONTROL:
                pos += 1
        for (target, name), value in primitive_values.items():
            if target == node["id"]:
                inputs[name] = value
        inputs.update(node.get("_values") or {})   # promoted subgraph widget values
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            origin = resolve(inp["link"])
            name = inp.get("widget", {}).get("name") or inp["name"]
            if origin is not None:
                inputs[name] = [origin[0], origin[1]]
            elif (node["id"], name) not in primitive_values and not any(
                    i.name == name and i.is_value for i in cls.INPUTS):
                inputs.pop(name, None)          # fed by a muted node: left for validation to report
        entry = {"class_type": kind, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[nid] = entry
    # Links to nodes that were not emitted (muted, unknown) are dropped, as the editor does.
    for entry in api.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in api:
                del entry["inputs"][name]
    if errors:
        raise WorkflowError(errors, source)
    return api
