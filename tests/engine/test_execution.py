"""Scheduling, caching, lazy inputs, partial runs, failures, interrupts, events, reports."""
from __future__ import annotations

import json
import threading

import pytest

from graphrt import Executor, GraphBuilder, Interrupted, NodeExecutionError, Workflow
from tests.engine import toy_nodes


def chain(values=(1, 2, 3), extra=None):
    """Const(v0) -> Add(+v1) -> Add(+v2) -> Show."""
    d = {"1": {"class_type": "Const", "inputs": {"value": values[0]}},
         "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": values[1], "label": "first"}},
         "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": values[2], "label": "second"}},
         "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    d.update(extra or {})
    return Workflow.from_dict(d)


def statuses(result):
    return {nid: r.status for nid, r in result.report.items()}


def test_runs_in_order_and_returns_outputs(runs):
    res = Executor().run(chain())
    assert res.outputs == {"4": {"value": 6}}
    assert statuses(res) == {"1": "executed", "2": "executed", "3": "executed", "4": "executed"}
    assert res.report["4"].ui == {"shown": "6"}
    assert all(r.seconds >= 0 and r.peak_rss > 0 for r in res.report.values())


def test_changed_constant_reruns_only_that_node_and_descendants(runs):
    ex = Executor()
    ex.run(chain((1, 2, 3)))
    runs.clear()
    res = ex.run(chain((1, 2, 30)))
    assert statuses(res) == {"1": "cached", "2": "cached", "3": "executed", "4": "executed"}
    assert runs["Add:second"] == 1 and runs["Add:first"] == 0 and runs["Const"] == 0
    assert res.outputs["4"]["value"] == 33
    runs.clear()
    res = ex.run(chain((1, 2, 30)))
    assert set(statuses(res).values()) == {"cached"} and sum(runs.values()) == 0


def test_workflows_sharing_a_prefix_share_cache_entries(runs):
    ex = Executor(cache="lru:100")
    ex.run(chain((5, 6, 7)))
    other = Workflow.from_dict({
        "a": {"class_type": "Const", "inputs": {"value": 5}},
        "b": {"class_type": "Add", "inputs": {"a": ["a", 0], "b": 6, "label": "first"}},
        "c": {"class_type": "Scale", "inputs": {"x": ["b", 0], "factor": 0.5}},
        "d": {"class_type": "Show", "inputs": {"value": ["c", 0]}}})
    runs.clear()
    res = ex.run(other)
    assert statuses(res) == {"a": "cached", "b": "cached", "c": "executed", "d": "executed"}
    assert res.outputs["d"]["value"] == 5.5


def test_unneeded_nodes_do_not_run(runs):
    wf = chain(extra={"9": {"class_type": "Concat", "inputs": {"a": "x", "b": "y"}}})
    res = Executor().run(wf)
    assert res.report["9"].status == "not_run" and runs["Concat"] == 0


def test_partial_execution_with_targets(runs):
    res = Executor().run(chain(), targets=["2"])
    assert res.outputs == {"2": {"sum": 3}}
    assert statuses(res) == {"1": "executed", "2": "executed", "3": "not_run", "4": "not_run"}


def test_lazy_switch_evaluates_only_the_chosen_branch(runs):
    def wf(which):
        return Workflow.from_dict({
            "1": {"class_type": "Const", "inputs": {"value": 1}},
            "t": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10, "label": "true"}},
            "f": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 20, "label": "false"}},
            "s": {"class_type": "Switch", "inputs": {"which": which, "on_true": ["t", 0], "on_false": ["f", 0]}},
            "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}})
    ex = Executor()
    res = ex.run(wf(True))
    assert res.outputs["o"]["value"] == 11 and runs["Add:true"] == 1 and runs["Add:false"] == 0
    assert res.report["f"].status == "not_run"
    res = ex.run(wf(False))
    assert res.outputs["o"]["value"] == 21 and runs["Add:false"] == 1


def test_failure_keeps_upstream_cached_and_fixed_rerun_resumes(runs):
    wf = Workflow.from_dict({
        "1": {"class_type": "Const", "inputs": {"value": 3}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Flaky", "inputs": {"x": ["2", 0]}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}})
    ex = Executor()
    with pytest.raises(NodeExecutionError) as info:
        ex.run(wf)
    err = info.value
    assert (err.node_id, err.class_type) == ("3", "Flaky") and err.inputs_summary == {"x": "4"}
    assert "flaky node failed on purpose" in str(err) and "Traceback" in err.traceback
    st = statuses(err.result)
    assert st == {"1": "executed", "2": "executed", "3": "failed", "4": "not_run"}
    assert err.result.report["3"].error["message"] == "flaky node failed on purpose"
    toy_nodes.FAIL["enabled"] = False
    runs.clear()
    res = ex.run(wf)
    assert statuses(res) == {"1": "cached", "2": "cached", "3": "executed", "4": "executed"}
    assert runs["Const"] == 0 and runs["Add"] == 0


def slow_wf(steps=5):
    return Workflow.from_dict({
        "1": {"class_type": "Const", "inputs": {"value": 7}},
        "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": steps}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})


def test_interrupt_at_a_progress_boundary_keeps_cache_consistent(runs):
    ex = Executor()
    seen = []

    def on_event(ev):
        seen.append(ev.type)
        if ev.type == "progress" and ev.value == 2:
            ex.interrupt()
    unsubscribe = ex.subscribe(on_event)
    with pytest.raises(Interrupted) as info:
        ex.run(slow_wf())
    assert statuses(info.value.result) == {"1": "executed", "2": "interrupted", "3": "not_run"}
    assert runs["SlowCompleted"] == 0 and "interrupted" in seen
    unsubscribe()
    runs.clear()
    res = ex.run(slow_wf())          # the half-run node was never cached; the finished one was
    assert statuses(res) == {"1": "cached", "2": "executed", "3": "executed"}
    assert res.outputs["3"]["value"] == 7


def test_interrupt_from_another_thread_stops_between_nodes(runs):
    ex = Executor()
    started = threading.Event()

    def on_event(ev):
        if ev.type == "node_finished" and ev.node_id == "1":
            t = threading.Thread(target=ex.interrupt)
            t.start()
            t.join()
    ex.subscribe(on_event)
    with pytest.raises(Interrupted) as info:
        ex.run(slow_wf())
    assert statuses(info.value.result)["2"] == "not_run"


def test_event_stream(runs):
    events = []
    res = Executor(on_event=events.append).run(slow_wf(3))
    types = [e.type for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert types.count("progress") == 3 and types.count("node_started") == 3
    prog = [e for e in events if e.type == "progress"]
    assert [(p.value, p.max, p.node_id, p.class_type) for p in prog][-1] == (3, 3, "2", "Slow")
    fin = [e for e in events if e.type == "node_finished"]
    assert all(e.cached is False and e.seconds >= 0 for e in fin)
    assert res.report.to_dict()["2"]["status"] == "executed"
    json.loads(res.report.to_json())


def test_cache_policy_last_run_drops_unused(runs):
    ex = Executor(cache="last-run")
    ex.run(chain((1, 1, 1)))
    ex.run(chain((2, 2, 2)))
    runs.clear()
    ex.run(chain((1, 1, 1)))
    assert runs["Const"] == 1          # the first run's entries were dropped


def test_cache_policy_lru_keeps_by_count(runs):
    ex = Executor(cache="lru:8")
    ex.run(chain((1, 1, 1)))
    ex.run(chain((2, 2, 2)))
    assert len(ex.cache) == 8
    runs.clear()
    ex.run(chain((1, 1, 1)))
    assert runs["Const"] == 0
    ex.run(chain((3, 3, 3)))
    assert len(ex.cache) <= 8


def blob_wf(n, tag):
    return Workflow.from_dict({"1": {"class_type": "Blob", "inputs": {"nbytes": n, "tag": tag}},
                               "2": {"class_type": "BlobSize", "inputs": {"blob": ["1", 0]}}})


def test_cache_policy_budget_evicts_by_size(runs):
    ex = Executor(cache="budget:1MB")
    ex.run(blob_wf(400_000, 1))
    ex.run(blob_wf(400_000, 2))
    assert ex.cache.nbytes <= 1_000_000
    ex.run(blob_wf(500_000, 3))
    assert ex.cache.nbytes <= 1_000_000
    runs.clear()
    ex.run(blob_wf(500_000, 3), targets=["1"])    # the blob itself (its small consumer stays cached)
    assert runs["Blob"] == 0           # the newest entry survived
    runs.clear()
    ex.run(blob_wf(400_000, 1), targets=["1"])
    assert runs["Blob"] == 1           # the oldest big one was evicted
    ex2 = Executor(cache="budget:100KB")
    ex2.run(blob_wf(500_000, 9))       # larger than the whole budget: not kept
    assert ex2.cache.nbytes <= 100_000


def test_cache_policy_none_keeps_nothing(runs):
    ex = Executor(cache="none")
    ex.run(chain())
    assert len(ex.cache) == 0


def test_bad_cache_policy():
    with pytest.raises(ValueError, match="cache policy"):
        Executor(cache="sometimes")


def test_fingerprint_invalidates_on_file_change(tmp_path, runs):
    f = tmp_path / "data.txt"
    f.write_text("abc")
    wf = Workflow.from_dict({"1": {"class_type": "FileLen", "inputs": {"path": str(f)}},
                             "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}})
    ex = Executor()
    assert ex.run(wf).outputs["2"]["value"] == 3
    ex.run(wf)
    assert runs["FileLen"] == 1
    f.write_text("abcdef")
    assert ex.run(wf).outputs["2"]["value"] == 6 and runs["FileLen"] == 2


def test_always_run_nodes_are_never_cached(runs):
    wf = Workflow.from_dict({"1": {"class_type": "Clock", "inputs": {}},
                             "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}})
    ex = Executor()
    assert ex.run(wf).outputs["2"]["value"] == 1
    assert ex.run(wf).outputs["2"]["value"] == 2


def test_intermediate_values_are_released_after_last_use(runs):
    import weakref
    import graphrt.executor as gx
    refs = []
    original = gx._RunState.process

    def spy(self, nid):
        original(self, nid)
        refs.append((nid, set(self.values)))
    gx._RunState.process = spy
    try:
        Executor(cache="none").run(chain())
    finally:
        gx._RunState.process = original
    held = dict(refs)
    assert "1" not in held["3"] and "2" not in held["4"]   # dropped once their consumer ran


def test_builder_round_trip(tmp_path):
    g = GraphBuilder()
    c = g.node("Const", value=4)
    a = g.node("Add", a=c[0], b=5, title="add five")
    g.node("Show", value=a.out("sum"))
    g.param("b", "INT", 5, "what to add", targets=[(a, "b")])
    path = tmp_path / "w.json"
    g.to_workflow().save(path)
    wf = Workflow.load(path)
    assert wf.to_dict()["2"]["_meta"] == {"title": "add five", "params": {"b": "b"}}
    assert Executor().run(wf, params={"b": 10}).outputs["3"]["value"] == 14
    with pytest.raises(KeyError, match="no output"):
        a.out("nope")
