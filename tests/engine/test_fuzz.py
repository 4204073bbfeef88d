"""The loader and validator on random and malformed JSON: clean errors, never a traceback."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphrt import Workflow, WorkflowError, validate
from tests.engine import toy_nodes  # noqa: F401

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20)

CLASSES = st.sampled_from(["Const", "Add", "Scale", "Concat", "Show", "Switch", "Slow", "EvenOnly", "Nope", ""])
INPUT_NAMES = st.sampled_from(["value", "a", "b", "x", "factor", "sep", "which", "on_true", "steps", "zz"])
link_or_value = st.one_of(json_values, st.tuples(st.sampled_from(["1", "2", "3", "9"]),
                                                 st.integers(-2, 3)).map(list))
nodes = st.dictionaries(
    st.sampled_from(["1", "2", "3", "4"]),
    st.fixed_dictionaries({"class_type": CLASSES,
                           "inputs": st.dictionaries(INPUT_NAMES, link_or_value, max_size=4)}),
    max_size=4)


def check(data):
    try:
        wf = Workflow.from_dict(data)
    except WorkflowError as e:
        assert e.errors
        return
    errors = validate(wf)
    assert all(isinstance(e.message, str) and e.message for e in errors)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_gives_clean_errors(data):
    check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes)
def test_random_graphs_give_clean_errors(data):
    check(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_random_text_files(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fz") / "w.json"
    p.write_text(text)
    try:
        Workflow.load(p)
    except WorkflowError as e:
        assert e.errors


@settings(max_examples=100, deadline=None)
@given(nodes, st.dictionaries(st.sampled_from(["seed", "x", "start"]), json_values, max_size=3))
def test_random_params(data, params):
    data = dict(data)
    data["_params"] = {"start": {"type": "INT", "default": 1, "targets": [["1", "value"]]}}
    try:
        wf = Workflow.from_dict(data)
    except WorkflowError:
        return
    assert all(e.message for e in validate(wf, params))
    json.dumps([e.to_dict() for e in validate(wf, params)])
