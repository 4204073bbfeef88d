"""The T2V workflow on the built-in tiny preset: templates, validation with
suggestions, interrupts, and the command line."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from graphrt import Executor, Workflow
from graphrt.registry import load_node_packs

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "workflows" / "t2v_tiny.json"


@pytest.fixture(scope="module", autouse=True)
def packs():
    load_node_packs()


def test_templates_validate():
    from graphrt import validate
    for name in ("t2v_tiny.json", "wan21_t2v_1.3b.json", "wan21_t2v_14b.json"):
        assert validate(Workflow.load(ROOT / "workflows" / name)) == [], name


@pytest.mark.parametrize("field,value,suggestion", [
    ("width", 100, "96 or 112"), ("height", 470, "464 or 480"), ("num_frames", 80, "77 or 81")])
def test_bad_sizes_rejected_with_suggestions(tmp_path, field, value, suggestion):
    from graphrt import WorkflowError
    ex = Executor(output_dir=tmp_path)
    with pytest.raises(WorkflowError) as info:
        ex.run(Workflow.load(TINY), params={field: value})
    messages = " ".join(e.message for e in info.value.errors)
    assert suggestion in messages and field in messages
    assert not any(tmp_path.rglob("*")), "nothing may run or be written when validation fails"


def test_interrupt_during_denoise_leaves_no_partial_output(tmp_path):
    from graphrt import Interrupted
    ex = Executor(output_dir=tmp_path)

    def on_event(event):
        if getattr(event, "type", None) == "progress" and getattr(event, "class_type", "") == "WanDenoise":
            ex.interrupt()
    ex.subscribe(on_event)
    with pytest.raises(Interrupted) as info:
        ex.run(Workflow.load(TINY))
    statuses = {r.class_type: r.status for r in info.value.result.report.values()}
    assert statuses["WanDenoise"] == "interrupted" and statuses["SaveImagesAsVideo"] == "not_run"
    assert statuses["WanPipelineLoader"] == "executed"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "no file may be written"
    # a re-run resumes: the loader and text encodes come from the cache
    ex._subscribers.clear() if hasattr(ex, "_subscribers") else None
    res = Executor.run(ex, Workflow.load(TINY))
    report = res.report
    assert {r.class_type: r.status for r in report.values()}["WanPipelineLoader"] == "cached"
    assert len(list(tmp_path.rglob("*.mp4"))) == 1


def test_cli_runs_tiny_workflow(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "graphrt", "run", str(TINY), "--output-dir", str(out),
                           "--set", "seed=3", "--report", str(tmp_path / "report.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mp4s = list(out.rglob("*.mp4"))
    assert len(mp4s) == 1
    from nodes.wan.media import probe_video
    info = probe_video(mp4s[0])
    assert (info["frames"], info["width"], info["height"]) == (17, 128, 80)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report


def test_cli_rejects_bad_frame_count(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graphrt", "run", str(TINY), "--output-dir", str(tmp_path),
                           "--set", "num_frames=18"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "17 or 21" in proc.stdout + proc.stderr
