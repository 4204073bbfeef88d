"""Starts `python -m graphrt serve` on a free loopback port (the server picks it: --port 0)
in its own folders, and kills it at teardown."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.server.comfy_client import ComfyClient

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120


class ServerProcess:
    def __init__(self, base: Path, *extra):
        self.base, self.extra = base, extra
        self.proc, self.url, self.lines = None, None, []

    def start(self):
        cmd = [sys.executable, "-m", "graphrt", "serve", "--listen", "127.0.0.1", "--port", "0",
               "--nodes", "tests.server.toy_nodes",
               "--models-dir", str(self.base / "models"), "--output-dir", str(self.base / "output"),
               "--input-dir", str(self.base / "input"), "--temp-dir", str(self.base / "temp"),
               "--user-dir", str(self.base / "user"), *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                if "listening on http://" in line and not found.is_set():
                    self.url = line.split("listening on ", 1)[1].strip().rstrip("/")
                    found.set()
            found.set()
        threading.Thread(target=read, daemon=True).start()
        if not found.wait(START_TIMEOUT) or self.url is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines[-40:]))
        assert self.url.startswith("http://127.0.0.1:"), self.url
        return self

    def client(self, **kw) -> ComfyClient:
        return ComfyClient(self.url, **kw)

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("server"), "--max-upload-size", "1").start()
    yield srv
    srv.kill(signal.SIGTERM)


@pytest.fixture
def spawn(tmp_path):
    """Start extra servers in this test's folder; all are killed at teardown."""
    started = []

    def start(*extra, base=None):
        srv = ServerProcess(base or tmp_path, *extra).start()
        started.append(srv)
        return srv
    yield start
    for srv in started:
        srv.kill()


def tiny_t2v(steps: int = 2, seed: int = 0) -> dict:
    """The tiny text-to-video template as an API prompt, with its steps and seed set."""
    wf = json.loads((ROOT / "workflows" / "t2v_tiny.json").read_text())
    wf.pop("_params", None)
    for node in wf.values():
        node.get("_meta", {}).pop("params", None)
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return wf
