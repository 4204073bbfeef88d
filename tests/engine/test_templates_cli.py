"""Template parameters, round-trip saving, the CLI and its exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from graphrt import Executor, Workflow, WorkflowError, validate
from graphrt.cli import main
from tests.engine import toy_nodes  # noqa: F401

TEMPLATE = {
    "1": {"class_type": "Const", "inputs": {"value": 2}, "_meta": {"title": "start", "params": {"value": "start"}}},
    "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3}, "_meta": {"params": {"b": "step"}}},
    "3": {"class_type": "Concat", "inputs": {"a": "x", "b": "y", "sep": " "}, "_meta": {"params": {"sep": "sep"}}},
    "4": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
    "_params": {
        "start": {"type": "INT", "default": 2, "description": "first value", "targets": [["1", "value"]]},
        "step": {"type": "INT", "default": 3, "description": "added", "targets": [["2", "b"]]},
        "sep": {"type": [" ", "-", "_"], "default": " ", "description": "separator", "targets": [["3", "sep"]]},
    },
}


@pytest.fixture
def template(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps(TEMPLATE, indent=1))
    return p


def test_save_round_trip_is_unchanged(template, tmp_path):
    wf = Workflow.load(template)
    out = tmp_path / "copy.json"
    wf.save(out)
    assert json.loads(out.read_text()) == TEMPLATE
    assert list(json.loads(out.read_text())) == list(TEMPLATE)     # key order kept


def test_params_through_the_api(template, runs):
    wf = Workflow.load(template)
    assert Executor().run(wf).outputs["4"]["value"] == 5
    assert Executor().run(wf, params={"start": 10, "step": -1}).outputs["4"]["value"] == 9


@pytest.mark.parametrize("params,fragment", [
    ({"strat": 1}, "did you mean 'start'"),
    ({"start": "ten"}, "expected a number"),
    ({"start": 10**10}, "above the maximum"),
    ({"sep": "+"}, "not one of the options"),
])
def test_bad_param_values_are_validated_like_inputs(template, params, fragment, runs):
    with pytest.raises(WorkflowError) as info:
        Executor().run(Workflow.load(template), params=params)
    assert fragment in " ".join(e.message for e in info.value.errors)
    assert sum(runs.values()) == 0


def test_param_targets_are_checked():
    bad = json.loads(json.dumps(TEMPLATE))
    bad["_params"]["step"]["targets"] = [["2", "bb"], ["7", "b"]]
    msgs = " ".join(e.message for e in validate(Workflow.from_dict(bad)))
    assert "which the node does not have; did you mean 'b'" in msgs and "node 7" in msgs


def test_cli_params_listing(template, capsys):
    assert main(["--nodes", "tests.engine.toy_nodes", "params", str(template)]) == 0
    out = capsys.readouterr().out
    assert "start (INT) = 2" in out and "-> 1.value" in out and "sep (one of  |-|_)" in out


def test_cli_run_with_set_and_report(template, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = main(["--nodes", "tests.engine.toy_nodes", "run", str(template), "--set", "start=40", "--set", "step=2",
                 "--report", str(report), "--output-dir", str(tmp_path / "out")])
    assert code == 0
    rep = json.loads(report.read_text())
    assert rep["4"]["status"] == "executed" and rep["4"]["ui"] == {"shown": "42"}
    assert rep["3"]["status"] == "not_run"


def test_cli_exit_code_invalid(template, capsys):
    assert main(["--nodes", "tests.engine.toy_nodes", "run", str(template), "--set", "start=abc"]) == 2
    assert main(["--nodes", "tests.engine.toy_nodes", "run", str(template), "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'nope'" in err
    assert main(["--nodes", "tests.engine.toy_nodes", "validate", str(template)]) == 0


def test_cli_exit_code_node_failure(tmp_path, capsys):
    p = tmp_path / "f.json"
    p.write_text(json.dumps({"1": {"class_type": "Const", "inputs": {"value": 1}},
                             "2": {"class_type": "Flaky", "inputs": {"x": ["1", 0]}},
                             "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}))
    assert main(["--nodes", "tests.engine.toy_nodes", "run", str(p)]) == 1
    err = capsys.readouterr().err
    assert "node 2 (Flaky) failed" in err and "x = 1" in err


def test_cli_exit_code_interrupted(tmp_path):
    """A real SIGINT to a running CLI process stops it with 130."""
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"1": {"class_type": "Const", "inputs": {"value": 1}},
                             "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": 1000}},
                             "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}))
    script = (
        "import signal, sys, threading, os\n"
        "from tests.engine import toy_nodes\n"
        "import tests.engine.toy_nodes as t\n"
        "orig = t.Slow.execute\n"
        "def slow(self, ctx, x, steps):\n"
        "    import time\n"
        "    for i in range(steps):\n"
        "        if i == 3: os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(0.001); ctx.progress(i + 1, steps)\n"
        "    return (x,)\n"
        "t.Slow.execute = slow\n"
        "from graphrt.cli import main\n"
        f"sys.exit(main(['run', {str(p)!r}, '--output-dir', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted at node 2" in proc.stderr


def test_cli_nodes_json(capsys):
    assert main(["--nodes", "tests.engine.toy_nodes", "nodes", "--json"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    add = schemas["Add"]
    assert add["input"]["required"]["b"][0] == "INT" and add["input"]["optional"]["label"][0] == "STRING"
    assert add["output"] == ["INT"] and add["output_name"] == ["sum"] and add["category"] == "test"
    assert schemas["Concat"]["input"]["required"]["sep"][1]["options"] == [" ", "-", "_"]
    assert schemas["Show"]["output_node"] is True


def test_python_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "graphrt", "--nodes", "tests.engine.toy_nodes", "nodes"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Add(" in proc.stdout
