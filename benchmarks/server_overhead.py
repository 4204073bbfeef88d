"""What the server adds to a run, and how many WebSocket events it delivers per second.

1. Per-prompt overhead on the tiny T2V workflow: a client queues the prompt with POST
   /prompt and waits for `execution_success` on the WebSocket; the same prompt runs with a
   direct `Executor.run` in this process. Measured twice:
   - re-queued unchanged (every node cached): the run itself is ~1 ms, so the difference is
     the server's own cost per prompt (HTTP, validation, sqlite commits, worker hand-off,
     messages). Goal: <= 20 ms.
   - with a new seed each time (denoise, decode and save re-run): end to end, server vs direct,
     run in alternating pairs (this machine's speed drifts), median of the pair differences.
2. Events per second on the WebSocket: a node reporting progress as fast as it can; each step
   is a `progress` and a `progress_state` message; counted at the client.

The server runs as `python -m graphrt serve --port 0` on 127.0.0.1, in temporary folders.

    python benchmarks/server_overhead.py [--repeat 20] [--steps 2] [--events 5000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphrt import Input, Node, Output, register_node  # noqa: E402


@register_node
class BenchProgress(Node):
    CATEGORY = "bench"
    DESCRIPTION = "Reports progress `steps` times as fast as it can."
    INPUTS = [Input("steps", "INT", default=1000, min=1, max=10**7), Input("tag", "INT", default=0)]
    OUTPUTS = [Output("steps", "INT")]
    OUTPUT_NODE = True

    def execute(self, ctx, steps, tag):
        for i in range(steps):
            ctx.progress(i + 1, steps)
        return (steps,)


def tiny_prompt(steps: int, seed: int) -> dict:
    wf = json.loads((ROOT / "workflows" / "t2v_tiny.json").read_text())
    wf.pop("_params", None)
    for node in wf.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return wf


class Client:
    def __init__(self, url):
        import websocket
        self.url, self.cid = url, uuid.uuid4().hex
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + f"/ws?clientId={self.cid}",
                                              timeout=300)

    def queue(self, prompt) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.cid}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["prompt_id"]

    def wait(self, prompt_id, count=None) -> int:
        """Wait for the prompt's final message; returns how many `count`-typed messages came."""
        n = 0
        while True:
            msg = self.ws.recv()
            if isinstance(msg, bytes):
                continue
            m = json.loads(msg)
            if m["data"].get("prompt_id") != prompt_id:
                continue
            if count and m["type"] in count:
                n += 1
            if m["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                if m["type"] != "execution_success":
                    raise RuntimeError(m)
                return n

    def run(self, prompt) -> float:
        t0 = time.perf_counter()
        self.wait(self.queue(prompt))
        return time.perf_counter() - t0


def start_server(tmp: Path):
    cmd = [sys.executable, "-m", "graphrt", "serve", "--listen", "127.0.0.1", "--port", "0",
           "--nodes", "benchmarks.server_overhead", "--models-dir", str(tmp / "models"),
           "--output-dir", str(tmp / "output"), "--input-dir", str(tmp / "input"), "--temp-dir", str(tmp / "temp"),
           "--user-dir", str(tmp / "user")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found = {}

    def read():
        for line in proc.stdout:
            if "listening on " in line:
                found["url"] = line.split("listening on ", 1)[1].strip().rstrip("/")
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while "url" not in found and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if "url" not in found:
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, found["url"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20, help="prompts per measurement")
    ap.add_argument("--pairs", type=int, default=5, help="alternating pairs with a new seed")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps of the tiny workflow")
    ap.add_argument("--events", type=int, default=5000, help="progress steps for the events/s test")
    a = ap.parse_args()
    os.environ.setdefault("GRAPHRT_HOME", tempfile.mkdtemp(prefix="graphrt-bench-home-"))
    from graphrt import Executor, Workflow

    with tempfile.TemporaryDirectory(prefix="graphrt-bench-") as tmp:
        tmp = Path(tmp)
        proc, url = start_server(tmp)
        try:
            client = Client(url)
            ex = Executor(output_dir=tmp / "direct")
            prompt = tiny_prompt(a.steps, 0)
            client.run(prompt)                       # warm both: model built, caches filled
            ex.run(Workflow.from_dict(prompt))
            server_cached = [client.run(prompt) for _ in range(a.repeat)]
            direct_cached = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                ex.run(Workflow.from_dict(prompt))   # a new Workflow per run, as a prompt is new
                direct_cached.append(time.perf_counter() - t0)
            s_med, d_med = statistics.median(server_cached), statistics.median(direct_cached)
            print(f"tiny T2V re-queued unchanged (all nodes cached), median of {a.repeat}:")
            print(f"  server end to end {s_med * 1e3:.1f} ms, direct Executor.run {d_med * 1e3:.2f} ms "
                  f"-> server overhead {(s_med - d_med) * 1e3:.1f} ms per prompt (goal <= 20 ms); "
                  f"p90 {sorted(server_cached)[int(0.9 * (a.repeat - 1))] * 1e3:.1f} ms")

            diffs, s_runs, d_runs = [], [], []
            for i in range(a.pairs):
                p = tiny_prompt(a.steps, 1000 + i)
                s = client.run(p)
                t0 = time.perf_counter()
                ex.run(Workflow.from_dict(tiny_prompt(a.steps, 2000 + i)))
                d = time.perf_counter() - t0
                s_runs.append(s)
                d_runs.append(d)
                diffs.append(s - d)
            print(f"tiny T2V with a new seed ({a.steps} steps; denoise, decode, save re-run), {a.pairs} pairs:")
            print(f"  server median {statistics.median(s_runs):.3f} s, direct median {statistics.median(d_runs):.3f} s, "
                  f"median pair difference {statistics.median(diffs) * 1e3:+.0f} ms")

            t0 = time.perf_counter()
            pid = client.queue({"1": {"class_type": "BenchProgress", "inputs": {"steps": a.events, "tag": 1}}})
            n = client.wait(pid, count=("progress", "progress_state"))
            dt = time.perf_counter() - t0
            print(f"WebSocket: {n} progress events ({a.events} steps) in {dt:.2f} s -> {n / dt:,.0f} events/s "
                  f"received by the client")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
