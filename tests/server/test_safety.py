"""What the server refuses: paths out of their folders, oversized or undecodable uploads,
malformed bodies, requests from other sites' pages; and uploads that it accepts."""
from __future__ import annotations

import io
import os
import time
import urllib.parse

import pytest
from PIL import Image

from tests.server.comfy_client import HTTPError


def png(color=(200, 30, 30), size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def status_of(c, method, path, **kw):
    try:
        return c.request(method, path, **kw)[0], ""
    except HTTPError as e:
        return e.status, e.body


def view_status(c, **query):
    return status_of(c, "GET", "/view?" + urllib.parse.urlencode(query))


def test_view_refuses_paths_outside_its_folders(server, tmp_path):
    c = server.client()
    out = server.base / "output"
    (out / "ok").mkdir(parents=True, exist_ok=True)
    (out / "ok" / "a.png").write_bytes(png())
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    os.symlink(secret, out / "link.png")
    os.symlink(tmp_path, out / "linkdir")
    assert view_status(c, filename="a.png", subfolder="ok", type="output")[0] == 200
    assert c.view("a.png", "ok")[:8] == b"\x89PNG\r\n\x1a\n"
    attempts = [dict(filename="../../etc/passwd"), dict(filename="/etc/passwd"), dict(filename="..", subfolder=""),
                dict(filename="passwd", subfolder="../../../../etc"), dict(filename="passwd", subfolder="/etc"),
                dict(filename="hosts", subfolder="ok/../../../../../etc"), dict(filename="link.png"),
                dict(filename="secret.txt", subfolder="linkdir"), dict(filename="a.png\x00.txt", subfolder="ok"),
                dict(filename="..\\..\\etc\\passwd"), dict(filename="ok/a.png/../../../etc/passwd"),
                dict(filename="a.png", subfolder="ok", type="../output")]
    for q in attempts:
        status, body = view_status(c, **q)
        assert status in (400, 403), (q, status)
        assert "secret" not in body and "root:" not in body and "Traceback" not in body
    assert view_status(c, filename="missing.png")[0] == 404
    assert view_status(c, filename="a.png [output]", subfolder="ok")[0] == 200


def test_uploads_are_checked_and_usable(server):
    c = server.client().connect()
    try:
        r = c.upload("red.png", png())
        assert r == {"name": "red.png", "subfolder": "", "type": "input"}
        assert (server.base / "input" / "red.png").is_file()
        assert c.upload("red.png", png()) == r                          # same content: reused
        assert c.upload("red.png", png((0, 0, 255)))["name"] == "red (1).png"
        assert c.upload("red.png", png((0, 255, 0)), extra={"overwrite": "true"})["name"] == "red.png"
        r2 = c.upload("cat.png", png(), extra={"subfolder": "pets", "type": "input"})
        assert r2 == {"name": "cat.png", "subfolder": "pets", "type": "input"}
        assert c.view("cat.png", "pets", "input")[:4] == b"\x89PNG"
        # the uploaded file feeds a node that takes an image from the input folder
        p = c.queue_prompt({"1": {"class_type": "SrvCopyImage", "inputs": {"image": "pets/cat.png"}}})
        msgs, _ = c.follow(p["prompt_id"], timeout=30)
        out = [m for m in msgs if m["type"] == "executed"][0]["data"]["output"]["images"][0]
        assert out == {"filename": "cat_copy.png", "subfolder": "copies", "type": "output"}
        masked = c.upload("m.png", png(), path="/upload/mask",
                          extra={"original_ref": '{"filename": "red.png", "subfolder": "", "type": "input"}'})
        assert masked["name"] == "m.png"
    finally:
        c.close()


def test_uploads_refuse_bad_names_types_and_sizes(server):
    c = server.client()
    cases = [("../evil.png", png(), {}), ("/tmp/evil.png", png(), {}), ("ok.png", png(), {"subfolder": "../.."}),
             ("ok.png", png(), {"subfolder": "/etc"}), ("ok.png", png(), {"type": "models"}),
             ("fake.png", b"not an image at all", {}), ("notes.txt", b"hello", {}),
             ("clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, {}), ("trunc.png", png()[:40], {})]
    for name, data, extra in cases:
        with pytest.raises(HTTPError) as e:
            c.upload(name, data, extra=extra)
        assert e.value.status in (400, 403), (name, e.value)
        assert "Traceback" not in e.value.body
    with pytest.raises(HTTPError) as e:                     # the server runs with a 1 MB limit
        c.upload("big.png", png() + b"\x00" * (1024 * 1024 + 10))
    assert e.value.status == 413
    assert not any(p.name.startswith(("evil", "fake", "notes", "clip", "big", "trunc"))
                   for p in (server.base / "input").rglob("*"))
    assert not list((server.base / "temp").rglob("*.png"))
    with pytest.raises(HTTPError) as e:
        c.request("POST", "/upload/image", raw=b"x", headers={"Content-Type": "text/plain"})
    assert e.value.status == 400


def test_malformed_bodies_and_other_sites_are_refused(server):
    c = server.client()
    for path in ("/queue", "/history", "/settings", "/jobs/cancel"):
        status, body = status_of(c, "POST", path, raw=b"{\"a\": ", headers={"Content-Type": "application/json"})
        assert status == 400 and "Traceback" not in body and "invalid JSON" in body
    status, _ = status_of(c, "POST", "/prompt", body={"prompt": {}},
                          headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
    assert status == 403
    status, _ = status_of(c, "GET", "/history?max_items=abc")
    assert status == 400
    for path in ("/userdata/..%2F..%2Fetc%2Fpasswd", "/userdata/%2Fetc%2Fpasswd"):
        assert status_of(c, "GET", path)[0] in (400, 403, 404)
    c.request("POST", "/userdata/workflows%2Fmine.json", raw=b'{"nodes": []}')
    listed = c.get_json("/userdata?dir=workflows&recurse=true&split=false&full_info=true")
    assert [f["path"] for f in listed] == ["mine.json"]
    assert c.get_json("/userdata/workflows%2Fmine.json") == {"nodes": []}
    t0 = time.monotonic()
    assert c.get_json("/prompt")["exec_info"]["queue_remaining"] >= 0 and time.monotonic() - t0 < 5
