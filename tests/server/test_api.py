"""The server driven as ComfyUI's own clients drive ComfyUI: POST /prompt, follow the
WebSocket, read /history, fetch outputs through /view."""
from __future__ import annotations

import time

import pytest

from tests.server.comfy_client import HTTPError
from tests.server.conftest import tiny_t2v


def types(messages):
    return [m["type"] for m in messages]


def by_type(messages, t):
    return [m["data"] for m in messages if m["type"] == t]


def count_prompt(steps=3, delay=0.0, tag="t"):
    return {"1": {"class_type": "SrvCount", "inputs": {"steps": steps, "delay": delay, "tag": tag}}}


def test_t2v_runs_then_reruns_only_what_the_seed_changes(server):
    c = server.client().connect()
    try:
        kind, hello = c.receive(10)
        assert hello["type"] == "status" and "queue_remaining" in hello["data"]["status"]["exec_info"]
        info = c.get_json("/object_info")
        prompt = tiny_t2v(steps=2, seed=0)
        outputs = [nid for nid, n in prompt.items() if info[n["class_type"]]["output_node"]]
        seeded = next(nid for nid, n in prompt.items() if "seed" in n["inputs"])
        r = c.queue_prompt(prompt)
        assert set(r) == {"prompt_id", "number", "node_errors"} and r["node_errors"] == {}
        msgs, _ = c.follow(r["prompt_id"], timeout=120)
        seq = types(msgs)
        assert seq[0] == "execution_start" and seq[-1] == "execution_success", seq
        assert by_type(msgs, "execution_cached")[0]["nodes"] == []
        assert {d["node"] for d in by_type(msgs, "executing")} == set(prompt)
        steps = [d for d in by_type(msgs, "progress") if d["node"] == seeded]
        assert [(d["value"], d["max"]) for d in steps] == [(1, 2), (2, 2)]
        executed = {d["node"]: d["output"] for d in by_type(msgs, "executed")}
        assert set(executed) == set(outputs)
        ref = executed[outputs[0]]["images"][0]
        assert set(ref) == {"filename", "subfolder", "type"} and ref["type"] == "output"
        video = c.view(ref["filename"], ref["subfolder"], ref["type"])
        assert video[4:8] == b"ftyp" and len(video) > 1000
        c.wait_idle_signal(r["prompt_id"])

        hist = c.history(r["prompt_id"])
        assert hist["status"]["status_str"] == "success" and hist["status"]["completed"] is True
        assert hist["outputs"][outputs[0]]["images"][0] == ref
        assert hist["prompt"][1] == r["prompt_id"] and hist["prompt"][2] == prompt
        assert [m[0] for m in hist["status"]["messages"]] == ["execution_start", "execution_cached",
                                                              "execution_success"]

        prompt[seeded]["inputs"]["seed"] = 7
        r2 = c.queue_prompt(prompt)
        msgs2, _ = c.follow(r2["prompt_id"], timeout=120)
        assert types(msgs2)[-1] == "execution_success"
        downstream = {seeded} | set(outputs)
        for nid, n in prompt.items():   # nodes fed by the seeded one re-run too
            if any(isinstance(v, list) and v[0] in downstream for v in n["inputs"].values()):
                downstream.add(nid)
        cached = set(by_type(msgs2, "execution_cached")[0]["nodes"])
        ran = {d["node"] for d in by_type(msgs2, "executing")}
        assert cached == set(prompt) - downstream and len(cached) >= 4
        assert ran == downstream
        ref2 = by_type(msgs2, "executed")[0]["output"]["images"][0]
        assert ref2["filename"] != ref["filename"]
    finally:
        c.close()


def test_progress_previews_and_ui_text(server):
    c = server.client().connect()
    try:
        r = c.queue_prompt(count_prompt(steps=3, tag="p"))
        msgs, frames = c.follow(r["prompt_id"], timeout=30)
        assert types(msgs)[-1] == "execution_success"
        assert [(d["value"], d["max"]) for d in by_type(msgs, "progress")] == [(1, 3), (2, 3), (3, 3)]
        previews = [p for t, p in frames if t == 1]
        assert len(previews) == 3
        assert all(p[:4] == b"\x00\x00\x00\x01" and p[4:6] == b"\xff\xd8" for p in previews)  # JPEG
        assert by_type(msgs, "executed")[0]["output"] == {"text": ["p:3"]}
        assert by_type(msgs, "progress_state")[-1]["nodes"]["1"]["state"] == "finished"
    finally:
        c.close()


def test_previews_with_metadata_after_feature_flags(server):
    c = server.client().connect()
    try:
        c.receive(10)
        c.ws.send('{"type": "feature_flags", "data": {"supports_preview_metadata": true}}')
        # status broadcasts from other clients' jobs may arrive first: the reply is among the next few
        seen = []
        while not any(kind == "json" and m["type"] == "feature_flags" for kind, m in seen):
            assert len(seen) < 10, seen
            seen.append(c.receive(10))
        r = c.queue_prompt(count_prompt(steps=2, tag="meta"))
        msgs, frames = c.follow(r["prompt_id"], timeout=30)
        import json
        import struct
        t, payload = frames[0]
        assert t == 4
        n = struct.unpack(">I", payload[:4])[0]
        meta = json.loads(payload[4:4 + n])
        assert meta["node_id"] == "1" and meta["prompt_id"] == r["prompt_id"] and meta["image_type"] == "image/jpeg"
        assert payload[4 + n:4 + n + 2] == b"\xff\xd8"
    finally:
        c.close()


def test_invalid_prompts_get_400_with_node_errors(server):
    c = server.client()
    bad = tiny_t2v(steps=2)
    seeded = next(nid for nid, n in bad.items() if "steps" in n["inputs"])
    bad[seeded]["inputs"]["steps"] = 0
    with pytest.raises(HTTPError) as e:
        c.queue_prompt(bad)
    assert e.value.status == 400
    body = e.value.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    err = body["node_errors"][seeded]
    assert err["class_type"] == bad[seeded]["class_type"] and err["dependent_outputs"]
    assert err["errors"][0]["type"] == "value_smaller_than_min"
    assert err["errors"][0]["extra_info"]["input_name"] == "steps"

    missing = count_prompt()
    del missing["1"]["inputs"]["steps"], missing["1"]["inputs"]["delay"], missing["1"]["inputs"]["tag"]
    missing["1"]["inputs"]["steps"] = "many"
    with pytest.raises(HTTPError) as e:
        c.queue_prompt(missing)
    assert e.value.json()["node_errors"]["1"]["errors"][0]["type"] == "invalid_input_type"

    with pytest.raises(HTTPError) as e:
        c.queue_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert e.value.status == 400 and e.value.json()["error"]["type"] == "invalid_prompt"

    with pytest.raises(HTTPError) as e:      # no output node
        c.queue_prompt({"1": {"class_type": tiny_t2v()[seeded]["class_type"], "inputs": {}}})
    assert e.value.json()["error"]["type"] in ("prompt_no_outputs",)

    for raw in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
        with pytest.raises(HTTPError) as e:
            c.request("POST", "/prompt", raw=raw, headers={"Content-Type": "application/json"})
        assert e.value.status == 400 and "Traceback" not in e.value.body
        assert e.value.json()["error"]["message"]
    with pytest.raises(HTTPError) as e:
        c.post_json("/prompt", {"client_id": "x"})
    assert e.value.status == 400 and e.value.json()["error"]["type"] == "no_prompt"
    with pytest.raises(HTTPError) as e:
        c.post_json("/queue", {"delete": "not-a-list"})
    assert e.value.status == 400


def test_node_error_reaches_the_client_and_the_server_keeps_serving(server):
    c = server.client().connect()
    try:
        r = c.queue_prompt({"1": {"class_type": "SrvFail", "inputs": {"message": "kaput"}}})
        msgs, _ = c.follow(r["prompt_id"], timeout=30)
        err = by_type(msgs, "execution_error")[0]
        assert err["node_id"] == "1" and err["node_type"] == "SrvFail"
        assert err["exception_message"] == "kaput" and err["exception_type"] == "RuntimeError"
        assert isinstance(err["traceback"], list)
        assert c.history(r["prompt_id"])["status"]["status_str"] == "error"
        r2 = c.queue_prompt(count_prompt(steps=1, tag="after"))
        assert types(c.follow(r2["prompt_id"], timeout=30)[0])[-1] == "execution_success"
    finally:
        c.close()


def test_queue_list_delete_clear_and_interrupt(server):
    c = server.client().connect()
    try:
        a = c.queue_prompt(count_prompt(steps=400, delay=0.05, tag="a"))["prompt_id"]
        b = c.queue_prompt(count_prompt(steps=1, tag="b"))["prompt_id"]
        d = c.queue_prompt(count_prompt(steps=1, tag="d"))["prompt_id"]
        e = c.queue_prompt(count_prompt(steps=1, tag="e"))["prompt_id"]
        seen = []
        deadline = time.monotonic() + 30
        while not any(m["type"] == "progress" for m in seen) and time.monotonic() < deadline:
            kind, m = c.receive(30)
            if kind == "json" and (m.get("data") or {}).get("prompt_id") == a:
                seen.append(m)
        q = c.get_json("/queue")
        assert [i[1] for i in q["queue_running"]] == [a]
        assert [i[1] for i in q["queue_pending"]] == [b, d, e]
        assert c.get_json("/prompt")["exec_info"]["queue_remaining"] == 4
        c.post_json("/queue", {"delete": [b]})
        assert [i[1] for i in c.get_json("/queue")["queue_pending"]] == [d, e]
        c.post_json("/queue", {"delete": [e]})
        c.post_json("/interrupt", {"prompt_id": "someone-else"})    # not running: ignored
        c.post_json("/interrupt", {})
        msgs, _ = c.follow(a, timeout=30)
        stop = by_type(msgs, "execution_interrupted")[0]
        assert stop["node_id"] == "1" and stop["node_type"] == "SrvCount"
        assert types(c.follow(d, timeout=30)[0])[-1] == "execution_success"
        status = c.history(a)["status"]
        assert status["status_str"] == "error" and status["completed"] is False
        assert c.history(b) is None and c.history(e) is None
        jobs = c.get_json("/jobs?status=cancelled&limit=10")["jobs"]
        assert a in [j["id"] for j in jobs]

        x = c.queue_prompt(count_prompt(steps=400, delay=0.05, tag="x"))["prompt_id"]
        y = c.queue_prompt(count_prompt(steps=1, tag="y"))["prompt_id"]
        c.post_json("/queue", {"clear": True})
        c.post_json("/interrupt", {})
        c.follow(x, timeout=30)
        assert c.get_json("/queue")["queue_pending"] == []
        assert c.history(y) is None
    finally:
        c.close()


def test_history_listing_and_deletion(server):
    c = server.client().connect()
    try:
        ids = [c.queue_prompt(count_prompt(steps=1, tag=f"h{i}"))["prompt_id"] for i in range(2)]
        for pid in ids:
            c.follow(pid, timeout=30)
        hist = c.get_json("/history?max_items=2")
        assert list(hist) == ids
        c.post_json("/history", {"delete": [ids[0]]})
        assert c.history(ids[0]) is None and c.history(ids[1]) is not None
        assert c.get_json(f"/jobs/{ids[1]}")["status"] == "completed"
    finally:
        c.close()


def test_object_info_models_and_server_info(server):
    c = server.client()
    (server.base / "models" / "loras" / "sub").mkdir(parents=True, exist_ok=True)
    (server.base / "models" / "loras" / "sub" / "style.safetensors").write_bytes(b"12345")
    info = c.get_json("/object_info")
    count = info["SrvCount"]
    assert count["input"]["required"]["steps"] == ["INT", {"default": 5, "min": 1, "max": 100000}]
    assert count["input"]["required"]["delay"][1]["step"] == 0.01
    assert count["input"]["required"]["tag"] == ["STRING", {"default": "", "multiline": False}]
    assert count["input_order"] == {"required": ["steps", "delay", "tag"], "optional": []}
    assert count["output"] == ["INT"] and count["output_name"] == ["count"]
    assert count["output_is_list"] == [False] and count["output_node"] is True
    assert count["category"] == "test/server" and count["description"].startswith("Counts")
    assert count["display_name"] == "SrvCount" and count["python_module"] == "tests.server.toy_nodes"
    assert info["SrvModelFile"]["input"]["required"]["lora"][0] == ["none", "sub/style.safetensors"]
    assert info["SrvCopyImage"]["input"]["required"]["image"][1].get("image_upload") is True
    t2v = tiny_t2v()
    denoise = next(n["class_type"] for n in t2v.values() if "scheduler" in n["inputs"])
    sched = info[denoise]["input"]["required"]["scheduler"]
    assert isinstance(sched[0], list) and "unipc" in sched[0]
    assert c.get_json(f"/object_info/{denoise}") == {denoise: info[denoise]}
    assert c.get_json("/api/object_info/SrvCount") == {"SrvCount": count}
    assert c.get_json("/object_info/Nope") == {}

    r = c.queue_prompt({"1": {"class_type": "SrvModelFile", "inputs": {"lora": "sub/style.safetensors"}}})
    for _ in range(100):
        h = c.history(r["prompt_id"])
        if h:
            break
        time.sleep(0.1)
    assert h["outputs"]["1"] == {"text": ["5"]}
    with pytest.raises(HTTPError) as e:     # a name outside the folder is not resolved: invalid
        c.queue_prompt({"1": {"class_type": "SrvModelFile", "inputs": {"lora": "../../etc/passwd"}}})
    assert e.value.status == 400

    folders = c.get_json("/models")
    assert {"loras", "diffusion_models", "vae", "text_encoders", "clip_vision", "diffusers"} <= set(folders)
    assert c.get_json("/models/loras") == ["sub/style.safetensors"]
    with pytest.raises(HTTPError) as e:
        c.get_json("/models/nope")
    assert e.value.status == 404
    assert c.get_json("/embeddings") == []
    assert isinstance(c.get_json("/extensions"), list)
    stats = c.get_json("/api/system_stats")
    assert {"os", "ram_total", "ram_free", "python_version"} <= set(stats["system"]) and stats["devices"]
    assert c.get_json("/features")["max_upload_size"] == 1024 * 1024
    assert c.get_json("/api/settings")["Comfy.TutorialCompleted"] is True
