"""The one worker thread: takes jobs from the store in order, runs each with the one
Executor (so its output cache carries over from prompt to prompt) and turns the
executor's events into ComfyUI's WebSocket messages and history entries."""
from __future__ import annotations

import gc
import logging
import threading
import time
import traceback

from ..errors import Interrupted, NodeExecutionError, WorkflowError
from ..workflow import Workflow
from .hub import encode_preview
from .jobs import Job
from .outputs import comfy_ui
from .prompts import runnable

log = logging.getLogger("graphrt.server")


def _ms() -> int:
    return int(time.time() * 1000)


def _type_name(e: BaseException) -> str:
    t = type(e)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


class Worker:
    def __init__(self, store, hub, executor, folders: dict, resolve, on_queue_change=None):
        self.store, self.hub, self.ex = store, hub, executor
        self.folders, self.resolve = folders, resolve
        self.on_queue_change = on_queue_change or (lambda: None)
        self.job: Job | None = None
        self.node: str | None = None          # the node running now
        self._interrupt_for: str | None = None
        self._stopping = False
        self._flags: dict = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="graphrt-worker", daemon=True)
        self.ex.subscribe(self._on_event, previews=True)
        self.last_run_seconds = 0.0

    # -- control (any thread) -------------------------------------------------------------
    def start(self):
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the current node (a running job goes back to pending); True if it stopped."""
        self._stopping = True
        self.ex.interrupt()
        self.store.wake()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        with self._lock:
            job = self.job
            if job is None or (prompt_id and prompt_id != job.prompt_id):
                return False
            self._interrupt_for = job.prompt_id
        self.ex.interrupt()
        return True

    def request_free(self, **flags):
        with self._lock:
            self._flags.update({k: v for k, v in flags.items() if v})
        self.store.wake()

    # -- the thread ------------------------------------------------------------------------
    def _loop(self):
        while not self._stopping:
            try:
                self._apply_flags()
                job = self.store.claim(timeout=0.5)
                if job is None:
                    continue
                self.on_queue_change()
                self._run(job)
                self.on_queue_change()
            except Exception:  # the worker must outlive any bug in bookkeeping
                log.error("worker error:\n%s", traceback.format_exc())
                time.sleep(0.2)

    def _apply_flags(self):
        with self._lock:
            flags, self._flags = self._flags, {}
        if flags.get("free_memory") or flags.get("unload_models"):
            self.ex.cache.clear()
            gc.collect()

    def _message(self, event, data, broadcast=False, final=False):
        """A status message (kept in the history); the final one is sent once the history has it."""
        data = {**data, "timestamp": _ms()}
        self._messages.append([event, data])
        if self._sid is not None or broadcast:
            if final:
                self._final = (event, data)
            else:
                self.hub.send(event, data, self._sid)

    def _run(self, job: Job):
        with self._lock:
            self.job, self.node = job, None
        self._sid = job.extra_data.get("client_id")
        self._messages, self._states, self._final = [], {}, None
        pid = job.prompt_id
        self._message("execution_start", {"prompt_id": pid})
        result_kind, error, report = "failed", None, None
        t0 = time.perf_counter()
        try:
            nodes = runnable(job.prompt, job.outputs_to_execute, self.resolve)
            result = self.ex.run(Workflow.from_dict(nodes), targets=job.outputs_to_execute)
            report = result.report
            result_kind = "completed"
            self._message("execution_success", {"prompt_id": pid}, final=True)
        except Interrupted as e:
            report = e.result.report if e.result is not None else None
            if self._stopping and self._interrupt_for != pid:
                log.info("server stopping: prompt %s goes back to the queue", pid)
                self.store.requeue(job)
                self._clear()
                return
            node = e.node_id or self.node
            self._message("execution_interrupted", {
                "prompt_id": pid, "node_id": node, "node_type": job.prompt.get(node, {}).get("class_type"),
                "executed": self._executed(report)}, broadcast=True, final=True)
            result_kind = "cancelled"
        except NodeExecutionError as e:
            report = e.result.report if e.result is not None else None
            error = {"prompt_id": pid, "node_id": e.node_id, "node_type": e.class_type,
                     "executed": self._executed(report), "exception_message": str(e.original),
                     "exception_type": _type_name(e.original),
                     "traceback": (e.traceback or "").splitlines(keepends=True),
                     "current_inputs": e.inputs_summary, "current_outputs": self._executed(report)}
            self._message("execution_error", error, final=True)
        except Exception as e:  # invalid at run time (a file gone since it was queued) or an engine bug
            node = e.errors[0].node_id if isinstance(e, WorkflowError) and e.errors else self.node
            error = {"prompt_id": pid, "node_id": node or "", "node_type":
                     job.prompt.get(node, {}).get("class_type", "") if node else "",
                     "executed": [], "exception_message": str(e), "exception_type": _type_name(e),
                     "traceback": traceback.format_exception(e) if not isinstance(e, WorkflowError) else [],
                     "current_inputs": {}, "current_outputs": []}
            self._message("execution_error", error, final=True)
        self.last_run_seconds = time.perf_counter() - t0
        outputs, meta = {}, {}
        for nid, rep in (report or {}).items():
            ui = comfy_ui(rep.ui, self.folders)
            if ui:
                outputs[nid] = ui
                meta[nid] = {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
        status = {"status_str": "success" if result_kind == "completed" else "error",
                  "completed": result_kind == "completed", "messages": self._messages}
        self.store.finish(job, result_kind, outputs, meta, status, error)
        if self._final is not None:
            self.hub.send(self._final[0], self._final[1], self._sid)
        self._clear()
        self.hub.send("executing", {"node": None, "display_node": None, "prompt_id": pid}, self._sid)

    def _clear(self):
        with self._lock:
            self.job, self.node = None, None
            if self._interrupt_for is not None:
                self._interrupt_for = None

    @staticmethod
    def _executed(report) -> list:
        return [nid for nid, r in (report or {}).items() if r.status in ("executed", "cached")]

    # -- executor events (on this thread) -----------------------------------------------------
    def _state(self, nid, state, value=0.0, max_=1.0):
        pid = self.job.prompt_id
        self._states[nid] = {"value": value, "max": max_, "state": state, "node_id": nid, "prompt_id": pid,
                             "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}
        self.hub.send("progress_state", {"prompt_id": pid, "nodes": dict(self._states)}, self._sid)

    def _on_event(self, ev):
        job = self.job
        if job is None:
            return
        pid, sid = job.prompt_id, self._sid
        t = ev.type
        if t == "run_started":
            if self._interrupt_for == pid:       # asked before the run cleared the flag
                self.ex.interrupt()
            self._message("execution_cached", {"nodes": list(ev.cached), "prompt_id": pid})
        elif t == "node_started":
            self.node = ev.node_id
            self.hub.send("executing", {"node": ev.node_id, "display_node": ev.node_id, "prompt_id": pid}, sid)
            self._state(ev.node_id, "running")
        elif t == "progress":
            value, total = ev.value, ev.max if ev.max is not None else 1
            self.hub.send("progress", {"value": value, "max": total, "prompt_id": pid, "node": ev.node_id}, sid)
            self._state(ev.node_id, "running", value, total)
        elif t == "preview":
            try:
                jpeg = encode_preview(ev.image)
            except Exception as e:  # a bad preview must not fail the node
                log.warning("preview of node %s not sent: %s", ev.node_id, e)
                return
            self.hub.send_preview(jpeg, {"node_id": ev.node_id, "prompt_id": pid, "display_node_id": ev.node_id,
                                         "parent_node_id": None, "real_node_id": ev.node_id}, sid)
        elif t == "node_finished":
            ui = comfy_ui(ev.data.get("ui") or {}, self.folders)
            if not ev.cached:
                done = self._states.get(ev.node_id, {}).get("max") or 1.0
                self._state(ev.node_id, "finished", done, done)
            if ui:
                self.hub.send("executed", {"node": ev.node_id, "display_node": ev.node_id, "output": ui,
                                           "prompt_id": pid}, sid)
