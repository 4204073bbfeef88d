"""Every class of bad input gives a structured error naming node, input,
expected and received — all of them at once, and nothing runs."""
from __future__ import annotations

import pytest

from graphrt import Executor, Workflow, WorkflowError, validate
from tests.engine import toy_nodes  # noqa: F401  (registers the toy nodes)

GOOD = {"1": {"class_type": "Const", "inputs": {"value": 2}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


def errors_for(nodes):
    return validate(Workflow.from_dict(nodes))


def only(errors):
    assert len(errors) == 1, errors
    return errors[0]


def test_good_workflow_has_no_errors():
    assert errors_for(GOOD) == []


@pytest.mark.parametrize("patch,node,inp,expected_part,received_part,message_part", [
    ({"2": {"class_type": "Ad", "inputs": {}}}, "2", None, "registered", "Ad", "did you mean 'Add'"),
    ({"3": {"class_type": "Show", "inputs": {}}}, "3", "value", "*", "nothing", "required input 'value' is missing"),
    ({"2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3, "c": 1}}}, "2", "c", "a", "c", "unknown input 'c'"),
    ({"2": {"class_type": "Add", "inputs": {"a": ["9", 0], "b": 3}}}, "2", "a", "existing node", "9", "node 9"),
    ({"2": {"class_type": "Add", "inputs": {"a": ["1", 4], "b": 3}}}, "2", "a", "0..0", "4", "has no output 4"),
    ({"3": {"class_type": "Scale", "inputs": {"x": ["4", 0]}},
      "4": {"class_type": "Concat", "inputs": {"a": "x", "b": "y"}}}, "3", "x", "INT", "STRING", "expects INT"),
    ({"2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": "three"}}}, "2", "b", "INT", '"three"', "number"),
    ({"2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 2.5}}}, "2", "b", "INT", "2.5", "integer"),
    ({"2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": True}}}, "2", "b", "INT", "true", "number"),
    ({"2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10**10}}}, "2", "b", "INT in [", "10000000000", "above the maximum"),
    ({"4": {"class_type": "Concat", "inputs": {"sep": "+"}}}, "4", "sep", "one of", '"+"', "not one of the options"),
    ({"4": {"class_type": "EvenOnly", "inputs": {"x": 3}}}, "4", "x", "valid", "3", "nearest: 2 or 4"),
    ({"4": {"class_type": "BlobSize", "inputs": {"blob": 3}}}, "4", "blob", "BLOB link", "3", "takes a link"),
])
def test_each_bad_input_is_a_structured_error(patch, node, inp, expected_part, received_part, message_part):
    wf = {**GOOD, **patch}
    e = only(errors_for(wf))
    assert e.node_id == node and e.input == inp
    assert expected_part in e.expected and received_part in e.received and message_part in e.message
    assert e.class_type == (wf[node]["class_type"] if node in wf else None)


def test_cycle_is_reported_before_running(runs):
    wf = {"1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
          "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
          "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    e = only(errors_for(wf))
    assert "cycle" in e.message and "1" in e.received and "2" in e.received
    with pytest.raises(WorkflowError):
        Executor().run(Workflow.from_dict(wf))
    assert sum(runs.values()) == 0


def test_all_errors_at_once_and_nothing_runs(runs, tmp_path):
    wf = {"1": {"class_type": "Const", "inputs": {"value": "x"}},
          "2": {"class_type": "Nope", "inputs": {}},
          "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "zz": 1}},
          "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    with pytest.raises(WorkflowError) as info:
        Executor(output_dir=tmp_path).run(Workflow.from_dict(wf))
    kinds = {(e.node_id, e.input) for e in info.value.errors}
    assert {("1", "value"), ("2", None), ("3", "zz")} <= kinds
    assert sum(runs.values()) == 0
    assert all(e.message for e in info.value.errors)


@pytest.mark.parametrize("bad", [[], "x", 3, None, {"1": 5}, {"1": {"inputs": {}}}, {"1": {"class_type": 1, "inputs": {}}},
                                 {"1": {"class_type": "Add", "inputs": []}}])
def test_malformed_files_are_schema_errors(bad):
    with pytest.raises(WorkflowError) as info:
        Workflow.from_dict(bad)
    assert info.value.errors and all(isinstance(e.message, str) for e in info.value.errors)


def test_invalid_json_file(tmp_path):
    p = tmp_path / "w.json"
    p.write_text('{"1": {"class_type": "Const",')
    with pytest.raises(WorkflowError, match="invalid JSON at line 1"):
        Workflow.load(p)
    with pytest.raises(WorkflowError, match="cannot read"):
        Workflow.load(tmp_path / "missing.json")


def test_float_accepts_int_and_widget_defaults_apply():
    wf = {"1": {"class_type": "Const", "inputs": {}},
          "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 2}},
          "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    assert errors_for(wf) == []
    assert Executor().run(Workflow.from_dict(wf)).outputs["3"]["value"] == 0.0


def test_value_input_may_be_fed_by_a_link_of_its_type():
    wf = {"1": {"class_type": "Const", "inputs": {"value": 4}},
          "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
          "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    assert Executor().run(Workflow.from_dict(wf)).outputs["3"]["value"] == 8
