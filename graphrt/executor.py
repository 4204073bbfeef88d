"""Runs a validated workflow: demand-driven order, cache, lazy inputs, events,
interrupts and the per-node report."""
from __future__ import annotations

import hashlib
import json
import resource
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from .cache import OutputCache, signature
from .disk_cache import DiskTier
from .errors import Interrupted, NodeExecutionError, ValidationError, WorkflowError
from .events import Event, NodeReport, RunReport
from .registry import get_node_class, load_node_packs, registry_version
from .types import InterruptedRun, NodeContext
from .validate import apply_params, validate_nodes
from .workflow import Workflow, is_link


@dataclass
class RunResult:
    outputs: dict                    # {node_id: {output_name: value}} for output nodes / targets
    report: RunReport
    seconds: float = 0.0
    ui: dict = field(default_factory=dict)


def summarize(value, limit: int = 80) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__}(shape={tuple(shape)}, dtype={dtype})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {summarize(v, 40)}" for k, v in list(value.items())[:6]) + "}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Plan:
    """The graph of one run: links, order, and which nodes the targets need."""

    def __init__(self, nodes: dict, targets: list[str]):
        self.nodes = nodes
        self.cls = {nid: get_node_class(n["class_type"]) for nid, n in nodes.items()}
        self.links: dict[str, list] = {}        # nid -> [(input, src, slot, lazy)]
        graph = nx.DiGraph()
        graph.add_nodes_from(nodes)
        for nid, node in nodes.items():
            spec = self.cls[nid].input_map()
            ls = []
            for name, value in node.get("inputs", {}).items():
                if is_link(value):
                    src = str(value[0])
                    ls.append((name, src, value[1], spec[name].lazy))
                    graph.add_edge(src, nid)
            ls.sort()
            self.links[nid] = ls
        self.order = list(nx.topological_sort(graph))
        self.position = {nid: i for i, nid in enumerate(self.order)}
        self.targets = targets
        self.relevant = self._closure(targets, follow_lazy=True)
        # Nodes with no fingerprint or always-run node in their ancestry have a
        # signature fixed by the workflow itself: computed once per plan.
        self.static_sigs: dict[str, str] = {}
        self.dynamic: set[str] = set()
        for nid in self.order:
            cls = self.cls[nid]
            if hasattr(cls, "fingerprint") or cls.ALWAYS_RUN or \
                    any(src in self.dynamic for _, src, _, _ in self.links[nid]):
                self.dynamic.add(nid)

    def _closure(self, start, follow_lazy: bool, stop=None) -> set:
        """`start` and its ancestors; the inputs of a node for which `stop(node)` holds are not followed."""
        seen, stack = set(), list(start)
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            if stop is None or not stop(nid):
                stack.extend(src for _, src, _, lazy in self.links[nid] if follow_lazy or not lazy)
        return seen

    def strict_closure(self, start, stop=None) -> set:
        return self._closure(start, follow_lazy=False, stop=stop)


class Executor:
    """Runs workflows, keeping node outputs cached across runs (see OutputCache)."""

    def __init__(self, cache: str = "last-run", output_dir: str | Path = "output", on_event=None,
                 load_packs: bool = True, cache_dir: str | Path | None = None, cache_dir_bytes: int | None = None):
        """`cache_dir` adds the disk tier (see disk_cache): outputs of `DISK_CACHE` nodes and what the
        budget evicts are kept there, at most `cache_dir_bytes`, and survive the process."""
        if load_packs:
            load_node_packs()
        self.cache = OutputCache(cache, disk=DiskTier(cache_dir, cache_dir_bytes) if cache_dir else None)
        self.output_dir = Path(output_dir)
        self._subscribers = [on_event] if on_event else []
        self._previewers: list = []
        self._interrupt = threading.Event()
        self._plans: dict = {}
        self._ui: dict[str, dict] = {}       # signature -> UI info of a cached output node
        self._metrics: dict[str, dict] = {}  # signature -> metrics of a cached node's run

    # -- events and interrupts -----------------------------------------------------------
    def subscribe(self, callback, previews: bool = False):
        """Call `callback(event)` for every event (`preview` events too if `previews`: nodes
        build previews only while such a subscriber exists); returns a function that unsubscribes."""
        self._subscribers.append(callback)
        if previews:
            self._previewers.append(callback)

        def unsubscribe():
            for group in (self._subscribers, self._previewers):
                if callback in group:
                    group.remove(callback)
        return unsubscribe

    def _emit(self, type_, node_id=None, class_type=None, **data):
        if self._subscribers:
            event = Event(type_, node_id, class_type, **data)
            for cb in list(self._subscribers):
                cb(event)

    def interrupt(self) -> None:
        """Stop the current run at the next node or progress boundary (thread-safe)."""
        self._interrupt.set()

    # -- running -------------------------------------------------------------------------
    def prepare(self, wf: Workflow, params: dict | None = None, targets=None) -> _Plan:
        """Validate and plan; a re-run of the same workflow object with the same
        params and targets reuses the plan (validation is the bulk of a cached run)."""
        try:
            key = json.dumps([params, targets], sort_keys=True, default=repr)
        except (TypeError, ValueError):
            key = None
        plans = wf.__dict__.setdefault("_plans", {})
        stamp = registry_version()
        if key is not None and key in plans and plans[key][0] == stamp:
            return plans[key][1]
        # The same content loaded again (e.g. the CLI re-reading a file) reuses it too.
        content = None
        if key is not None:
            try:
                content = hashlib.blake2b(json.dumps([wf._data, key], sort_keys=True).encode(),
                                          digest_size=16).hexdigest()
            except (TypeError, ValueError):
                content = None
        hit = self._plans.get(content) if content else None
        if hit is not None and hit[0] == stamp:
            plan = hit[1]
        else:
            plan = self._prepare(wf, params, targets)
            if content:
                self._plans[content] = (stamp, plan)
                while len(self._plans) > 16:
                    self._plans.pop(next(iter(self._plans)))
        if key is not None:
            plans.clear()
            plans[key] = (stamp, plan)
        return plan

    def _prepare(self, wf: Workflow, params, targets) -> _Plan:
        nodes, errors = apply_params(wf, params)
        errors += validate_nodes(nodes)
        if targets is not None:
            for t in targets:
                if str(t) not in nodes:
                    errors.append(ValidationError(str(t), None, None, "a node id of the workflow", str(t),
                                                  f"target node {t} does not exist"))
        if errors:
            raise WorkflowError(errors, wf.source)
        chosen = [str(t) for t in targets] if targets is not None else \
            [nid for nid, n in nodes.items() if get_node_class(n["class_type"]).OUTPUT_NODE]
        if not chosen:
            raise WorkflowError([ValidationError(None, None, None, "an output node or a target", "none",
                                                 "the workflow has no output node; add one or name --target nodes")],
                                wf.source)
        return _Plan(nodes, chosen)

    def run(self, wf: Workflow, params: dict | None = None, targets=None) -> RunResult:
        plan = self.prepare(wf, params, targets)
        self._interrupt.clear()
        self.cache.begin_run()
        t_run = time.perf_counter()
        report = RunReport((nid, NodeReport(nid, n["class_type"], (n.get("_meta") or {}).get("title")))
                           for nid, n in plan.nodes.items())
        state = _RunState(self, plan, report)
        closure, needed = plan.strict_closure(plan.targets), state.demand(plan.targets)
        for nid in closure - needed:          # upstream of a cached node: kept, reported, not loaded
            if self.cache.touch(state.sigs[nid]):
                report[nid].status = "cached"
        if self._subscribers:
            self._emit("run_started", nodes=len(plan.nodes),
                       cached=[nid for nid in plan.order if nid in closure and state.sigs[nid] in self.cache])
        try:
            state.run_set(needed)
        except InterruptedRun:
            node = state.current
            if node is not None:
                report[node].status = "interrupted"
            self._end_run()
            result = RunResult({}, report, time.perf_counter() - t_run)
            self._emit("interrupted", node, report[node].class_type if node else None, result=result)
            raise Interrupted(node, result) from None
        except _NodeFailed as f:
            self._end_run()
            result = RunResult({}, report, time.perf_counter() - t_run)
            self._emit("node_failed", f.node_id, report[f.node_id].class_type, error=report[f.node_id].error,
                       result=result)
            raise NodeExecutionError(f.node_id, report[f.node_id].class_type, f.inputs_summary, f.original,
                                     f.tb, result) from f.original
        self._end_run()
        outputs = {}
        for nid in plan.targets:
            cls = plan.cls[nid]
            vals = state.values.get(nid, ())
            outputs[nid] = {o.name: v for o, v in zip(cls.OUTPUTS, vals)}
        result = RunResult(outputs, report, time.perf_counter() - t_run,
                           {nid: r.ui for nid, r in report.items() if r.ui})
        self._emit("run_finished", seconds=result.seconds, summary=report.summary(), result=result)
        return result

    def _end_run(self):
        self.cache.end_run()
        for kept in (self._ui, self._metrics):
            for sig in [k for k in kept if k not in self.cache]:
                del kept[sig]


class _NodeFailed(Exception):
    def __init__(self, node_id, original, tb, inputs_summary):
        self.node_id, self.original, self.tb, self.inputs_summary = node_id, original, tb, inputs_summary


class _RunState:
    """One run's bookkeeping: signatures, produced values, who still needs them."""

    def __init__(self, ex: Executor, plan: _Plan, report: RunReport):
        self.ex, self.plan, self.report = ex, plan, report
        self.values: dict[str, tuple] = {}
        self.sigs: dict[str, str] = {}
        self.done: set[str] = set()
        self.current = None
        self.nonce = uuid.uuid4().hex
        self.keep = set(plan.targets)
        self.consumers: dict[str, int] = {}
        self._signatures()

    def _signatures(self):
        plan = self.plan
        static = plan.static_sigs
        for nid in plan.order:
            if nid not in plan.relevant:
                continue
            if nid in static:
                self.sigs[nid] = static[nid]
                continue
            cls = plan.cls[nid]
            node_inputs = plan.nodes[nid].get("inputs", {})
            constants = {k: v for k, v in node_inputs.items() if not is_link(v)}
            fp = None
            if hasattr(cls, "fingerprint"):
                try:
                    fp = cls.fingerprint(**constants)
                except Exception as e:  # unreadable input: never serve this node from cache
                    fp = f"unfingerprintable:{self.nonce}:{e}"
            if cls.ALWAYS_RUN:
                fp = [fp, self.nonce]
            parents = [(name, self.sigs[src], slot) for name, src, slot, _ in plan.links[nid]]
            self.sigs[nid] = signature(cls.class_name(), constants, fp, parents)
            if nid not in plan.dynamic:
                static[nid] = self.sigs[nid]

    def demand(self, start) -> set:
        """The nodes `start` needs: its ancestors, but not the inputs of a node the cache will serve
        (as ComfyUI's execution list), so a cached text encode spares loading its encoder."""
        return self.plan.strict_closure(start, stop=lambda nid: nid not in self.done and self.sigs[nid] in self.ex.cache)

    def run_set(self, wanted: set):
        for nid in wanted:
            if nid in self.done:
                continue
            for _, src, _, lazy in self.plan.links[nid]:
                if not lazy:
                    self.consumers[src] = self.consumers.get(src, 0) + 1
        for nid in sorted(wanted, key=self.plan.position.__getitem__):
            if nid not in self.done:
                self.process(nid)

    def _release(self, nid):
        for _, src, _, lazy in self.plan.links[nid]:
            if lazy:
                continue
            left = self.consumers.get(src, 0) - 1
            self.consumers[src] = left
            if left <= 0 and src not in self.keep:
                self.values.pop(src, None)

    def process(self, nid: str):
        ex, plan = self.ex, self.plan
        if ex._interrupt.is_set():
            self.current = None
            raise InterruptedRun()
        cls, rep = plan.cls[nid], self.report[nid]
        ctype = rep.class_type
        self.current = nid
        hit = ex.cache.get(self.sigs[nid])
        if hit is not None:
            self.values[nid] = hit
            rep.status = "cached"
            rep.ui = ex._ui.get(self.sigs[nid], rep.ui)
            rep.metrics = ex._metrics.get(self.sigs[nid], rep.metrics)
            self.done.add(nid)
            self._release(nid)
            ex._emit("node_finished", nid, ctype, seconds=0.0, cached=True, ui=rep.ui)
            return
        skipped = [src for _, src, _, lazy in plan.links[nid] if not lazy and src not in self.done]
        if skipped:   # a hit foreseen by demand() is gone (evicted, or a damaged disk entry): run its inputs
            self.run_set(self.demand(skipped) - self.done)
            self.current = nid
        ex._emit("node_started", nid, ctype)
        ctx = NodeContext(nid, ctype, ex.output_dir, self._progress, ex._interrupt.is_set,
                          _preview=self._preview if ex._previewers else None)
        instance = cls()
        inputs = self._gather(nid)
        t0 = time.perf_counter()
        try:
            if cls.has_lazy():
                while True:
                    needed = instance.check_lazy(ctx, **inputs) if hasattr(instance, "check_lazy") else []
                    missing = [n for n in needed or [] if inputs.get(n) is None and self._lazy_src(nid, n)]
                    if not missing:
                        break
                    srcs = [self._lazy_src(nid, n) for n in missing]
                    self.run_set(plan.strict_closure(srcs) - self.done)
                    self.current = nid
                    inputs = self._gather(nid)
            out = instance.execute(ctx, **inputs)
        except InterruptedRun:
            rep.seconds = time.perf_counter() - t0
            raise
        except Exception as e:
            rep.status, rep.seconds, rep.peak_rss = "failed", time.perf_counter() - t0, _rss()
            summary = {k: summarize(v) for k, v in inputs.items()}
            tb = traceback.format_exc()
            rep.error = {"type": type(e).__name__, "message": str(e), "inputs": summary, "traceback": tb}
            raise _NodeFailed(nid, e, tb, summary) from e
        if len(cls.OUTPUTS) == 0:
            out = ()
        elif not isinstance(out, tuple) or (len(cls.OUTPUTS) == 1 and len(out) != 1):
            out = (out,)
        if len(out) != len(cls.OUTPUTS):
            e = TypeError(f"{ctype}.execute returned {len(out)} values for {len(cls.OUTPUTS)} outputs")
            rep.status = "failed"
            rep.error = {"type": "TypeError", "message": str(e), "inputs": {}, "traceback": ""}
            raise _NodeFailed(nid, e, "", {})
        rep.seconds = time.perf_counter() - t0
        rep.peak_rss = _rss()
        rep.status = "executed"
        rep.ui = ctx.ui_info
        ex.cache.put(self.sigs[nid], out, persist=getattr(cls, "DISK_CACHE", False))
        if rep.ui:
            ex._ui[self.sigs[nid]] = rep.ui
        rep.metrics = ctx.metrics_info
        if rep.metrics:
            ex._metrics[self.sigs[nid]] = rep.metrics
        self.values[nid] = out
        self.done.add(nid)
        self._release(nid)
        ex._emit("node_finished", nid, ctype, seconds=rep.seconds, cached=False, ui=rep.ui)

    def _lazy_src(self, nid, name):
        for inp, src, _, lazy in self.plan.links[nid]:
            if inp == name and lazy and src not in self.done:
                return src
        return None

    def _gather(self, nid) -> dict:
        inputs = {}
        node_inputs = self.plan.nodes[nid].get("inputs", {})
        spec = self.plan.cls[nid].input_map()
        links = {name: (src, slot) for name, src, slot, _ in self.plan.links[nid]}
        for name, value in node_inputs.items():
            if name in links:
                src, slot = links[name]
                vals = self.values.get(src)
                inputs[name] = None if vals is None else vals[slot]
            else:
                inputs[name] = value
        for name, inp in spec.items():
            if name not in inputs and inp.optional and inp.lazy:
                inputs[name] = None
        return inputs

    def _progress(self, node_id, value, total):
        self.ex._emit("progress", node_id, self.report[node_id].class_type, value=value, max=total)

    def _preview(self, node_id, image):
        event = Event("preview", node_id, self.report[node_id].class_type, image=image)
        for cb in list(self.ex._previewers):
            cb(event)
