"""Run events and the per-node run report."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


class Event:
    """A run event: `type` is one of run_started (with `cached`: the ids of the nodes the
    cache will serve), node_started, progress, preview (with `image`), node_finished (with
    `cached` and the node's `ui` info), node_failed, interrupted, run_finished; `node_id` and
    `class_type` name the node where it applies; other fields depend on the type."""
    __slots__ = ("type", "node_id", "class_type", "data")

    def __init__(self, type: str, node_id=None, class_type=None, **data):
        self.type, self.node_id, self.class_type, self.data = type, node_id, class_type, data

    def __getattr__(self, name):
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return {"type": self.type, "node_id": self.node_id, "class_type": self.class_type,
                **{k: v for k, v in self.data.items() if k not in ("result", "image")}}

    def __repr__(self):
        return f"Event({self.to_dict()})"


@dataclass
class NodeReport:
    node_id: str
    class_type: str
    title: str | None = None
    status: str = "not_run"      # executed | cached | failed | interrupted | not_run
    seconds: float = 0.0
    peak_rss: int = 0            # bytes: the process's RSS high-water mark when the node ended
    error: dict | None = None
    ui: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)   # what the node reported doing (ctx.metrics)

    def to_dict(self) -> dict:
        return asdict(self)


class RunReport(dict):
    """{node_id: NodeReport} for every node of the workflow."""

    def count(self, status: str) -> int:
        return sum(1 for r in self.values() if r.status == status)

    def to_dict(self) -> dict:
        return {k: v.to_dict() for k, v in self.items()}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), default=str, **({"indent": 2} | kw))

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("executed", "cached", "failed", "interrupted", "not_run")
                 if self.count(s)]
        return ", ".join(parts)
