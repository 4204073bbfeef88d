"""Inlining of UI-format subgraphs (ComfyUI frontend's `definitions.subgraphs`) into one flat UI graph.

A subgraph is a reusable definition: its own nodes and links, plus an input
node and an output node (ids in `inputNode.id` / `outputNode.id`, -10 and -20 in
the files the ComfyUI frontend writes) whose slots are the subgraph's inputs and
outputs. An instance is a node whose `type` is a definition's id. Flattening
does what the editor does when it queues a prompt:

- every node of an instance is copied with the id "<instance id>:<inner id>"
  (nested instances stack: "12:5:3"), which is also the node id errors name;
- a link from the input node's slot k is rewired to whatever feeds the
  instance's input k; if nothing is linked there but the instance carries a
  promoted widget value for it, that value is set on the inner input;
- a link into the output node's slot k defines the instance's output k: links
  from that output are rewired to the inner origin (through nested instances);
- a muted instance drops its contents; a bypassed one stays a bypassed node,
  so its inputs pass through by type as for any bypassed node.

The result is an ordinary flat UI graph (node and link ids become strings) for
`ui_format.ui_to_api`.
"""
from __future__ import annotations

from .errors import ValidationError, WorkflowError
from .ui_links import BYPASS, MUTED, link_rows

INPUT_NODE_ID, OUTPUT_NODE_ID = -10, -20


def _definitions(graph, found):
    for sg in (graph.get("definitions") or {}).get("subgraphs") or []:
        if isinstance(sg, dict) and "id" in sg:
            found.setdefault(sg["id"], sg)
            _definitions(sg, found)
    return found


def has_subgraphs(data) -> bool:
    return bool(_definitions(data, {}))


def flatten(data: dict, source: str | None = None) -> dict:
    """A copy of UI-format `data` with every subgraph instance inlined (see the module docstring)."""
    defs = _definitions(data, {})
    nodes_out: list[dict] = []
    links_out: dict[str, list] = {}
    redirect: dict[tuple, tuple] = {}   # (instance id, output slot) -> (origin id, slot): resolved at the end

    def expand(nodes, links, prefix, feed, stack):
        """Copy one graph level; `feed(slot)` says what an input-node slot stands for: (origin id, slot),
        ("value", v) for a promoted widget value, or None."""
        graph_in, graph_out = stack[-1][1] if stack else (INPUT_NODE_ID, OUTPUT_NODE_ID)
        rows = link_rows(links)
        cut = {}      # link id from the input node that feeds nothing -> the promoted widget value, if any
        for lid, (origin, oslot, target, tslot, ltype) in rows.items():
            key = prefix + str(lid)
            if target == graph_out:
                if origin == graph_in:
                    fed = feed(oslot)
                    if fed is not None and fed[0] != "value":
                        redirect[(prefix[:-1], tslot)] = fed
                else:
                    redirect[(prefix[:-1], tslot)] = (prefix + str(origin), oslot)
                continue
            if origin == graph_in:
                fed = feed(oslot)
                if fed is None or fed[0] == "value":
                    cut[lid] = fed
                    continue
                links_out[key] = [key, fed[0], fed[1], prefix + str(target), tslot, ltype]
                continue
            links_out[key] = [key, prefix + str(origin), oslot, prefix + str(target), tslot, ltype]

        for node in nodes:
            nid = prefix + str(node["id"])
            sg = defs.get(node.get("type"))
            if sg is not None and node.get("mode") == MUTED:
                continue
            if sg is None or node.get("mode") == BYPASS:
                copy = dict(node, id=nid)
                copy["inputs"] = []
                for inp in node.get("inputs") or []:
                    inp = dict(inp)
                    if inp.get("link") in cut:
                        fed = cut[inp["link"]]
                        inp["link"] = None
                        if fed is not None:
                            name = (inp.get("widget") or {}).get("name") or inp.get("name")
                            copy.setdefault("_values", {})[name] = fed[1]
                    elif inp.get("link") is not None:
                        inp["link"] = prefix + str(inp["link"])
                    copy["inputs"].append(inp)
                copy["outputs"] = [dict(o, links=[prefix + str(l) for l in o.get("links") or []])
                                   for o in node.get("outputs") or []]
                nodes_out.append(copy)
                continue
            if any(s[0] == sg["id"] for s in stack):
                raise WorkflowError([ValidationError(nid, node.get("type"), None, "a subgraph that does not contain "
                                                     "itself", "a recursive subgraph",
                                                     f"subgraph {sg.get('name') or sg['id']!r} contains itself")],
                                    source)
            inner_feed = _instance_feed(node, prefix, cut)
            ids = ((sg.get("inputNode") or {}).get("id", INPUT_NODE_ID),
                   (sg.get("outputNode") or {}).get("id", OUTPUT_NODE_ID))
            expand(sg.get("nodes") or [], sg.get("links") or [], nid + ":", inner_feed, stack + ((sg["id"], ids),))

    def _instance_feed(node, prefix, cut):
        inputs = node.get("inputs") or []
        widget_values = node.get("widgets_values")
        widget_values = list(widget_values) if isinstance(widget_values, list) else []
        promoted = [k for k, inp in enumerate(inputs) if inp.get("widget") and inp.get("link") is None]
        # An instance's own widgets_values hold its promoted widgets' values, in input order.
        promoted_value = {k: widget_values[i] for i, k in enumerate(promoted) if i < len(widget_values)}

        def feed(slot):
            if slot >= len(inputs):
                return None
            link = inputs[slot].get("link")
            if link in cut:   # fed by this level's own input node, which carries a value or nothing
                return cut[link]
            if link is None:
                return ("value", promoted_value[slot]) if slot in promoted_value else None
            key = prefix + str(link)
            if key in links_out:
                row = links_out[key]
                return row[1], row[2]
            return None
        return feed

    expand(data.get("nodes") or [], data.get("links") or [], "", lambda slot: None, ())

    def follow(origin, slot):
        seen = set()
        while (origin, slot) in redirect and (origin, slot) not in seen:
            seen.add((origin, slot))
            origin, slot = redirect[(origin, slot)]
        return origin, slot

    for row in links_out.values():
        row[1], row[2] = follow(row[1], row[2])
    flat = {k: v for k, v in data.items() if k != "definitions"}
    flat["nodes"] = nodes_out
    flat["links"] = list(links_out.values())
    return flat
