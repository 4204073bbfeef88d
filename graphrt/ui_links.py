"""What a UI-format file's nodes and links mean, shared by the UI importer and subgraph inlining."""
from __future__ import annotations

MUTED, BYPASS = 2, 4     # litegraph node modes


def link_rows(links) -> dict:
    """{link id: (origin id, origin slot, target id, target slot, type)} from a UI file's links (lists or objects)."""
    out = {}
    for link in links or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                               link.get("type"))
        else:
            out[link[0]] = tuple(link[1:6])
    return out
