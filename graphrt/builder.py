"""Build workflows in Python:

    g = GraphBuilder()
    a = g.node("Add", a=1, b=2)
    b = g.node("Add", a=a[0], b=3)          # a[0], a["sum"], a.out("sum"): links
    g.param("b", "INT", 3, "second term", targets=[(b, "b")])
    g.to_workflow().save("sum.json")
"""
from __future__ import annotations

from .registry import get_node_class
from .workflow import PARAMS_KEY, Workflow


class NodeHandle:
    def __init__(self, builder: "GraphBuilder", node_id: str, class_type: str):
        self.builder, self.id, self.class_type = builder, node_id, class_type

    def out(self, which: int | str = 0) -> list:
        """A link `[node_id, index]` to one output, by index or name."""
        if isinstance(which, str):
            cls = get_node_class(self.class_type)
            names = [o.name for o in cls.OUTPUTS] if cls else []
            if which not in names:
                raise KeyError(f"{self.class_type} has no output {which!r}; outputs: {names}")
            which = names.index(which)
        return [self.id, int(which)]

    __getitem__ = out

    def set(self, **inputs) -> "NodeHandle":
        self.builder._nodes[self.id]["inputs"].update(inputs)
        return self

    def __repr__(self):
        return f"<node {self.id} {self.class_type}>"


class GraphBuilder:
    def __init__(self):
        self._nodes: dict[str, dict] = {}
        self._params: dict[str, dict] = {}
        self._next = 1

    def node(self, class_type: str, id: str | None = None, title: str | None = None, **inputs) -> NodeHandle:
        if id is None:
            while str(self._next) in self._nodes:
                self._next += 1
            id = str(self._next)
        id = str(id)
        if id in self._nodes:
            raise ValueError(f"node id {id!r} is already used")
        entry = {"class_type": class_type, "inputs": dict(inputs)}
        if title:
            entry["_meta"] = {"title": title}
        self._nodes[id] = entry
        return NodeHandle(self, id, class_type)

    def param(self, name: str, type, default=None, description: str = "", targets=()) -> None:
        """Declare a template parameter that sets the given (node, input) pairs."""
        tlist = []
        for handle, inp in targets:
            nid = handle.id if isinstance(handle, NodeHandle) else str(handle)
            tlist.append([nid, inp])
            meta = self._nodes[nid].setdefault("_meta", {})
            meta.setdefault("params", {})[inp] = name
            if default is not None:
                self._nodes[nid]["inputs"][inp] = default
        self._params[name] = {"type": type, "default": default, "description": description, "targets": tlist}

    def to_dict(self) -> dict:
        import copy
        d = copy.deepcopy(self._nodes)
        if self._params:
            d[PARAMS_KEY] = copy.deepcopy(self._params)
        return d

    def to_workflow(self) -> Workflow:
        return Workflow.from_dict(self.to_dict())
