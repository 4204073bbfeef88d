"""The engine hooks the server relies on, in-process: the cached-node list at run start,
previews only for subscribers that ask, and a cached output node's UI info kept."""
from __future__ import annotations

from graphrt import Executor, Workflow
from tests.server import toy_nodes  # noqa: F401  (registers the Srv* nodes)


def wf(steps, tag="x"):
    return Workflow.from_dict({"1": {"class_type": "SrvCount", "inputs": {"steps": steps, "delay": 0.0,
                                                                          "tag": tag}}})


def test_run_started_lists_cached_nodes_and_ui_survives_the_cache(tmp_path):
    events = []
    ex = Executor(output_dir=tmp_path, load_packs=False)
    ex.subscribe(events.append)
    ex.run(wf(2))
    assert events[0].type == "run_started" and events[0].cached == []
    assert [e for e in events if e.type == "preview"] == []      # nobody asked for previews
    events.clear()
    result = ex.run(wf(2))
    assert events[0].cached == ["1"]
    finished = [e for e in events if e.type == "node_finished"][0]
    assert finished.cached is True and finished.ui == {"text": "x:2"}
    assert result.report["1"].status == "cached" and result.report["1"].ui == {"text": "x:2"}


def test_previews_reach_only_subscribers_that_ask(tmp_path):
    plain, previews = [], []
    ex = Executor(output_dir=tmp_path, load_packs=False)
    ex.subscribe(plain.append)
    stop = ex.subscribe(previews.append, previews=True)
    ex.run(wf(3, "p"))
    assert [e.type for e in previews].count("preview") == 3
    assert "preview" not in [e.type for e in plain]
    assert previews[[e.type for e in previews].index("preview")].image.shape == (16, 24, 3)
    stop()
    previews.clear()
    ex.run(wf(4, "p"))
    assert previews == []
