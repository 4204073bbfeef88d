"""Errors the engine reports: structured validation errors, node failures, interrupts."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ValidationError:
    """One problem with a workflow: where it is, what was expected, what was found."""
    node_id: str | None
    class_type: str | None
    input: str | None
    expected: str
    received: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}" + (f" ({self.class_type})" if self.class_type else ""))
        if self.input:
            where.append(f"input '{self.input}'")
        return (" ".join(where) + ": " if where else "") + self.message


class WorkflowError(ValueError):
    """The workflow is invalid; `.errors` lists every problem found."""

    def __init__(self, errors: list[ValidationError], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + f"{len(self.errors)} error(s) in workflow:\n" + "\n".join(f"  - {e}" for e in self.errors))


class NodeExecutionError(RuntimeError):
    """A node raised; the run stopped there. Results of finished nodes stay cached."""

    def __init__(self, node_id, class_type, inputs_summary, original, traceback_text, result=None):
        self.node_id = node_id
        self.class_type = class_type
        self.inputs_summary = inputs_summary
        self.original = original
        self.traceback = traceback_text
        self.result = result
        super().__init__(f"node {node_id} ({class_type}) failed: {type(original).__name__}: {original}")


class Interrupted(RuntimeError):
    """The run was interrupted; `.result` holds the report of what ran."""

    def __init__(self, node_id=None, result=None):
        self.node_id = node_id
        self.result = result
        super().__init__("run interrupted" + (f" at node {node_id}" if node_id else ""))
