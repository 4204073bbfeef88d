"""Workflows: ComfyUI API-format JSON `{id: {class_type, inputs, _meta}}`, with an
optional `_params` block that turns a workflow into a parameterised template."""
from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import ValidationError, WorkflowError

PARAMS_KEY = "_params"


@lru_cache(maxsize=1)
def _validator():
    import jsonschema
    schema = json.loads(resources.files("graphrt").joinpath("schema/workflow.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def is_link(value) -> bool:
    """A link is `[source_id, output_index]`; any other 2-list of that shape counts too."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool)


def schema_errors(data) -> list[ValidationError]:
    if not isinstance(data, dict):
        return [ValidationError(None, None, None, "a JSON object {node_id: node}", type(data).__name__,
                                "a workflow must be a JSON object mapping node ids to nodes")]
    errors = []
    for e in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = [str(p) for p in e.absolute_path]
        node_id = path[0] if path and path[0] != PARAMS_KEY else None
        where = "/".join(path) or "(top level)"
        errors.append(ValidationError(node_id, None, path[2] if len(path) > 2 and path[1] == "inputs" else None,
                                      "", _short(e.instance), f"{where}: {e.message}"))
    return errors


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Workflow:
    """A workflow graph. Keeps the file's content (and key order) for saving back unchanged."""

    def __init__(self, data: dict, source: str | None = None):
        self._data = data
        self.source = source

    @classmethod
    def from_dict(cls, data, source: str | None = None) -> "Workflow":
        """An API-format dict, or a UI-format one (nodes + links, as an editor saves it), converted."""
        from .ui_format import is_ui_format, ui_to_api
        if is_ui_format(data):
            data = ui_to_api(data, source)
        errors = schema_errors(data)
        if errors:
            raise WorkflowError(errors, source)
        return cls(copy.deepcopy(data), source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Workflow":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise WorkflowError([ValidationError(None, None, None, "a readable file", str(path),
                                                 f"cannot read {path}: {e.strerror or e}")], str(path)) from None
        except UnicodeDecodeError:
            raise WorkflowError([ValidationError(None, None, None, "UTF-8 JSON", "binary data",
                                                 f"{path} is not a UTF-8 text file")], str(path)) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkflowError([ValidationError(None, None, None, "JSON", _short(text[max(0, e.pos - 20):e.pos + 20]),
                                                 f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")],
                                str(path)) from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return copy.deepcopy(self._data)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self._data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @property
    def nodes(self) -> dict:
        """{node_id: node dict} (the `_params` block excluded)."""
        return {k: v for k, v in self._data.items() if k != PARAMS_KEY}

    @property
    def params(self) -> dict:
        return self._data.get(PARAMS_KEY, {})

    def __eq__(self, other):
        return isinstance(other, Workflow) and self._data == other._data

    def __repr__(self):
        return f"Workflow({len(self.nodes)} nodes, {len(self.params)} params, source={self.source!r})"
