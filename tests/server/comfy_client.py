"""A client written only against ComfyUI's documented HTTP/WebSocket API (urllib +
websocket-client), the way scripts drive ComfyUI; nothing here knows graphrt."""
from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import websocket

FINAL = ("execution_success", "execution_error", "execution_interrupted")


class HTTPError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status, self.body = status, body

    def json(self):
        return json.loads(self.body)


class ComfyClient:
    def __init__(self, base: str, client_id: str | None = None):
        self.base = base.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.ws = None

    # -- HTTP -------------------------------------------------------------------------------
    def request(self, method, path, body=None, raw: bytes | None = None, headers=None, timeout=30):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            raise HTTPError(e.code, e.read().decode("utf-8", "replace")) from None

    def get_json(self, path):
        return json.loads(self.request("GET", path)[1])

    def post_json(self, path, body):
        status, data, _ = self.request("POST", path, body)
        return json.loads(data) if data else None

    def queue_prompt(self, prompt: dict, **extra) -> dict:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id, **extra})

    def history(self, prompt_id):
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def view(self, filename, subfolder="", type="output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self.request("GET", f"/view?{q}")[1]

    def upload(self, filename: str, content: bytes, field="image", extra: dict | None = None,
               path="/upload/image") -> dict:
        boundary = uuid.uuid4().hex
        parts = []
        for k, v in (extra or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + content + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, data, _ = self.request("POST", path, raw=body,
                                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(data)

    # -- WebSocket ----------------------------------------------------------------------------
    def connect(self, timeout=30):
        url = self.base.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        self.ws = websocket.create_connection(url, timeout=timeout)
        return self

    def close(self):
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def receive(self, timeout: float):
        """One message: ('json', {type, data}) or ('binary', (event_type, payload))."""
        self.ws.settimeout(timeout)
        op, data = self.ws.recv_data()
        if op == websocket.ABNF.OPCODE_TEXT:
            return "json", json.loads(data)
        return "binary", (struct.unpack(">I", data[:4])[0], data[4:])

    def follow(self, prompt_id, timeout=120.0, on_message=None):
        """Messages of `prompt_id` until its final one; returns (messages, binary_frames)."""
        deadline = time.monotonic() + timeout
        messages, frames = [], []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no final message for {prompt_id} in {timeout} s; got "
                                   f"{[m['type'] for m in messages]}")
            kind, msg = self.receive(left)
            if kind == "binary":
                frames.append(msg)
                continue
            data = msg.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            messages.append(msg)
            if on_message:
                on_message(msg)
            if msg["type"] in FINAL and data.get("prompt_id") == prompt_id:
                return messages, frames

    def wait_idle_signal(self, prompt_id, timeout=30.0):
        """ComfyUI's 'done' signal: `executing` with node null for this prompt."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kind, msg = self.receive(deadline - time.monotonic())
            if kind == "json" and msg["type"] == "executing" and msg["data"].get("node") is None \
                    and msg["data"].get("prompt_id") == prompt_id:
                return msg
        raise TimeoutError("no executing/null message")
