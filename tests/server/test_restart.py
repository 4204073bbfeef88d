"""Nothing accepted is lost: jobs queued or running when the server stops (killed, or
asked to stop) run when it starts again."""
from __future__ import annotations

import time


def wait_history(c, prompt_id, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = c.history(prompt_id)
        if h:
            return h
        time.sleep(0.1)
    raise TimeoutError(f"{prompt_id} did not finish in {timeout} s")


def wait_progress(c, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kind, m = c.receive(deadline - time.monotonic())
        if kind == "json" and m["type"] == "progress":
            return m
    raise TimeoutError("no progress")


def count(steps, delay, tag):
    return {"1": {"class_type": "SrvCount", "inputs": {"steps": steps, "delay": delay, "tag": tag}}}


def test_jobs_left_in_the_queue_run_after_a_restart(spawn, tmp_path):
    srv = spawn()
    c = srv.client().connect()
    running = c.queue_prompt(count(40, 0.05, "running"))["prompt_id"]
    queued = c.queue_prompt(count(2, 0.0, "queued"))["prompt_id"]
    wait_progress(c)
    c.close()
    srv.kill()                                    # SIGKILL: no chance to clean up
    assert srv.proc.returncode == -9

    srv2 = spawn(base=tmp_path)
    assert "queued again" in srv2.log()
    c2 = srv2.client().connect()
    for pid, text in ((running, "running:40"), (queued, "queued:2")):
        h = wait_history(c2, pid, 60)
        assert h["status"]["status_str"] == "success" and h["outputs"]["1"] == {"text": [text]}

    stopped = c2.queue_prompt(count(40, 0.05, "stopped"))["prompt_id"]
    wait_progress(c2)
    c2.close()
    srv2.kill(15)                                 # SIGTERM: stops at the next step, job stays queued
    assert srv2.proc.returncode == 0, srv2.log()
    srv3 = spawn(base=tmp_path)
    h = wait_history(srv3.client(), stopped, 60)
    assert h["status"]["status_str"] == "success" and h["outputs"]["1"] == {"text": ["stopped:40"]}
