"""Every shipped workflow template validates against the registered nodes (no weights needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from graphrt import Workflow
from graphrt.registry import load_node_packs
from graphrt.validate import apply_params, validate_nodes

TEMPLATES = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_validates(path):
    load_node_packs()
    wf = Workflow.load(path)
    assert wf.params, f"{path.name} declares no parameters"
    nodes, errors = apply_params(wf, {})
    assert errors == []
    assert validate_nodes(nodes) == []
