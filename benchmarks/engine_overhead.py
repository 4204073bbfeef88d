"""Per-node overhead of the engine on trivial nodes.

A 1,000-node chain and a 1,000-node wide DAG (one source, 998 independent
nodes, one sink that reads them all is too wide for a node schema, so the
sink reads a 999th node fed by a fan-in tree). Prints microseconds per node
for a cold run (everything executes) and a fully cached re-run.
Goal on the development machine: < 100 µs per executed node, < 20 µs per cached node.

    python benchmarks/engine_overhead.py [--nodes 1000] [--repeat 3] [--no-packs]

The node packs (Wan and ComfyUI's core nodes) are loaded first, as every user has them: a bigger
registry must not cost the engine per node.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphrt import Executor, Input, Node, Output, Workflow, register_node  # noqa: E402


@register_node
class BenchInc(Node):
    CATEGORY = "bench"
    INPUTS = [Input("x", "INT", default=0, min=-10**9, max=10**9), Input("k", "INT", default=1)]
    OUTPUTS = [Output("x", "INT")]

    def execute(self, ctx, x, k):
        return (x + k,)


@register_node
class BenchSum(Node):
    CATEGORY = "bench"
    OUTPUT_NODE = True
    INPUTS = [Input("a", "INT", default=0, min=-10**12, max=10**12), Input("b", "INT", default=0, min=-10**12, max=10**12)]
    OUTPUTS = [Output("s", "INT")]

    def execute(self, ctx, a, b):
        return (a + b,)


def chain(n: int) -> dict:
    d = {"0": {"class_type": "BenchInc", "inputs": {"x": 0, "k": 1}}}
    for i in range(1, n - 1):
        d[str(i)] = {"class_type": "BenchInc", "inputs": {"x": [str(i - 1), 0], "k": 1}}
    d[str(n - 1)] = {"class_type": "BenchSum", "inputs": {"a": [str(n - 2), 0], "b": 0}}
    return d


def wide(n: int) -> dict:
    """One source, a layer of n/2 independent nodes, reduced pairwise into one output."""
    d = {"src": {"class_type": "BenchInc", "inputs": {"x": 0, "k": 1}}}
    layer = []
    width = n // 2
    for i in range(width):
        d[f"w{i}"] = {"class_type": "BenchInc", "inputs": {"x": ["src", 0], "k": i}}
        layer.append(f"w{i}")
    j = 0
    while len(layer) > 1:
        nxt = []
        for a, b in zip(layer[::2], layer[1::2]):
            d[f"r{j}"] = {"class_type": "BenchSum", "inputs": {"a": [a, 0], "b": [b, 0]}}
            nxt.append(f"r{j}")
            j += 1
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
    return d


def measure(d: dict, repeat: int):
    n = len(d)
    cold, warm = [], []
    for _ in range(repeat):
        wf = Workflow.from_dict(d)    # fresh: nothing validated or planned yet
        ex = Executor(cache="last-run", load_packs=False)
        t0 = time.perf_counter()
        r = ex.run(wf)
        cold.append(time.perf_counter() - t0)
        assert r.report.count("executed") == n
        wf = Workflow.from_dict(d)    # a re-loaded file: validated again, results all cached
        t0 = time.perf_counter()
        r = ex.run(wf)
        warm.append(time.perf_counter() - t0)
        assert r.report.count("cached") == n
        t0 = time.perf_counter()
        r = ex.run(wf)                # the same Workflow object again: its plan is reused
        again = time.perf_counter() - t0
    return n, min(cold) / n * 1e6, min(warm) / n * 1e6, again / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-packs", action="store_true", help="only the engine and the two bench nodes")
    a = ap.parse_args()
    from graphrt.registry import load_node_packs, node_names
    if not a.no_packs:
        load_node_packs()
    print(f"engine overhead per node (whole run: validation, planning, signatures, execution, report); "
          f"{len(node_names())} node types registered")
    for name, d in (("chain", chain(a.nodes)), ("wide DAG", wide(a.nodes))):
        n, cold, warm, again = measure(d, a.repeat)
        print(f"  {name:9s} {n:5d} nodes: cold {cold:6.1f} µs/node (goal < 100) | cached, reloaded file "
              f"{warm:5.1f} µs/node | cached, same Workflow object {again:5.1f} µs/node (goal < 20)")


if __name__ == "__main__":
    main()
