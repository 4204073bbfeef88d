"""The prompt queue and its history, in one sqlite file.

A job is committed (fsync'd) before POST /prompt answers, so nothing accepted is
lost: a job that was pending or running when the server stopped is pending again
when it starts (`recover`), and runs then."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass

HISTORY_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT UNIQUE NOT NULL,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    state TEXT NOT NULL,              -- pending | running | done
    result TEXT,                      -- completed | failed | cancelled (when done)
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    outputs TEXT,
    meta TEXT,
    status TEXT,                      -- ComfyUI's {status_str, completed, messages}
    error TEXT                        -- the execution_error message, if any
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, number, seq);
"""


@dataclass
class Job:
    prompt_id: str
    number: float
    prompt: dict
    extra_data: dict
    outputs_to_execute: list
    state: str
    created: float
    started: float | None = None
    finished: float | None = None
    result: str | None = None
    outputs: dict | None = None
    meta: dict | None = None
    status: dict | None = None
    error: dict | None = None

    def queue_item(self) -> list:
        """ComfyUI's queue tuple [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def history_entry(self) -> dict:
        return {"prompt": self.queue_item(), "outputs": self.outputs or {}, "meta": self.meta or {},
                "status": self.status}


_COLUMNS = "prompt_id, number, prompt, extra_data, outputs_to_execute, state, created, started, finished, " \
           "result, outputs, meta, status, error"


def _job(row) -> Job:
    (pid, number, prompt, extra, outs, state, created, started, finished, result, outputs, meta, status,
     error) = row
    load = lambda t: None if t is None else json.loads(t)  # noqa: E731
    return Job(pid, number, json.loads(prompt), json.loads(extra), json.loads(outs), state, created, started,
               finished, result, load(outputs), load(meta), load(status), load(error))


class JobStore:
    def __init__(self, path: str):
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        row = self._db.execute("SELECT MAX(ABS(number)) FROM jobs").fetchone()
        self._number = int(row[0] or 0) + 1

    def close(self):
        with self._lock:
            self._closed = True
            self._changed.notify_all()
            self._db.close()

    def _tx(self, sql_args: list[tuple]):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in sql_args:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._changed.notify_all()

    def recover(self) -> int:
        """Jobs that were running when the server stopped become pending again."""
        with self._lock:
            n = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()[0]
            self._tx([("UPDATE jobs SET state='pending', started=NULL WHERE state='running'", ())])
            return n

    # -- queue ---------------------------------------------------------------------------
    def add(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list, number=None,
            front: bool = False) -> float:
        with self._lock:
            if number is None:
                number = -self._number if front else self._number
                self._number += 1
            self._tx([("INSERT INTO jobs (prompt_id, number, prompt, extra_data, outputs_to_execute, state, created)"
                       " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                       (prompt_id, number, json.dumps(prompt), json.dumps(extra_data), json.dumps(outputs),
                        time.time()))])
            return number

    def exists(self, prompt_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM jobs WHERE prompt_id=?", (prompt_id,)).fetchone() is not None

    def claim(self, timeout: float | None = None) -> Job | None:
        """The next pending job, now marked running; None after `timeout` seconds or on close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state='pending' "
                                       f"ORDER BY number, seq LIMIT 1").fetchone()
                if row is not None:
                    job = _job(row)
                    job.state, job.started = "running", time.time()
                    self._tx([("UPDATE jobs SET state='running', started=? WHERE prompt_id=?",
                               (job.started, job.prompt_id))])
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._changed.wait(left)
            return None

    def wake(self):
        with self._lock:
            self._changed.notify_all()

    def finish(self, job: Job, result: str, outputs: dict, meta: dict, status: dict, error: dict | None = None):
        job.state, job.result, job.finished = "done", result, time.time()
        job.outputs, job.meta, job.status, job.error = outputs, meta, status, error
        self._tx([("UPDATE jobs SET state='done', result=?, finished=?, outputs=?, meta=?, status=?, error=? "
                   "WHERE prompt_id=?",
                   (result, job.finished, json.dumps(outputs, default=str), json.dumps(meta),
                    json.dumps(status, default=str), None if error is None else json.dumps(error, default=str),
                    job.prompt_id)),
                  ("DELETE FROM jobs WHERE state='done' AND seq NOT IN "
                   "(SELECT seq FROM jobs WHERE state='done' ORDER BY finished DESC LIMIT ?)", (HISTORY_LIMIT,))])

    def requeue(self, job: Job):
        self._tx([("UPDATE jobs SET state='pending', started=NULL WHERE prompt_id=?", (job.prompt_id,))])

    def _select(self, where: str, args=(), order="number, seq", limit=-1, offset=0) -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                                    (*args, limit, offset)).fetchall()
        return [_job(r) for r in rows]

    def running(self) -> list[Job]:
        return self._select("state='running'")

    def pending(self) -> list[Job]:
        return self._select("state='pending'")

    def remaining(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('pending','running')").fetchone()[0]

    def delete_pending(self, ids) -> int:
        ids = [str(i) for i in ids]
        with self._lock:
            n = sum(self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='pending' AND prompt_id=?",
                                     (i,)).fetchone()[0] for i in ids)
            self._tx([("DELETE FROM jobs WHERE state='pending' AND prompt_id=?", (i,)) for i in ids])
            return n

    def clear_pending(self):
        self._tx([("DELETE FROM jobs WHERE state='pending'", ())])

    # -- history -------------------------------------------------------------------------
    def history(self, max_items: int | None = None, offset: int = -1) -> list[Job]:
        """Finished jobs, oldest first (ComfyUI's order); max_items without an offset gives the newest."""
        if offset < 0:
            with self._lock:
                total = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='done'").fetchone()[0]
            offset = max(0, total - max_items) if max_items is not None else 0
        return self._select("state='done'", order="finished, seq", limit=-1 if max_items is None else max_items,
                            offset=max(0, offset))

    def count(self, states: tuple) -> int:
        with self._lock:
            marks = ",".join("?" * len(states))
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", states).fetchone()[0]

    def get(self, prompt_id: str) -> Job | None:
        jobs = self._select("prompt_id=?", (prompt_id,))
        return jobs[0] if jobs else None

    def delete_history(self, ids):
        self._tx([("DELETE FROM jobs WHERE state='done' AND prompt_id=?", (str(i),)) for i in ids])

    def clear_history(self):
        self._tx([("DELETE FROM jobs WHERE state='done'", ())])

    _STATUS_SQL = {"in_progress": "state='running'", "pending": "state='pending'",
                   "completed": "(state='done' AND result='completed')",
                   "failed": "(state='done' AND result='failed')",
                   "cancelled": "(state='done' AND result='cancelled')"}

    def jobs(self, statuses, limit: int, offset: int) -> tuple[list[Job], int]:
        """For /jobs (statuses among in_progress, pending, completed, failed, cancelled): running
        first, then pending in queue order, then finished ones newest first; and the total."""
        where = " OR ".join(self._STATUS_SQL[s] for s in statuses if s in self._STATUS_SQL) or "0"
        order = ("CASE state WHEN 'running' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, "
                 "CASE WHEN state='done' THEN -finished ELSE number END, seq")
        jobs = self._select(where, order=order, limit=limit, offset=offset)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}").fetchone()[0]
        return jobs, total
