"""Transformer block weights supplied from their file as the blocks run (`offload="blocks"`).

A streamed transformer keeps its embeddings and head resident; its blocks' parameters are
never allocated. `BlockStream.get(k)` hands `_call_block` block k's weights, widened to the
compute dtype (float32 on CPU: the same values a resident load holds), and starts reading and
widening the next block on a background thread while block k computes. At most two blocks
(the current one and the next) are widened at a time, and only one stream holds blocks at a
time: a stream that starts handing out weights drops the others' (Wan2.2's two experts are
never both widened). With `keep=True` the blocks stay once read (the whole model widened on
first use) until `release()` — what `models.residency` calls when another model needs the room.

The reader (`read(k) -> tensors in WanTransformerBlock.weights() order`) is supplied by the
loader (`checkpoints.streaming`), which knows the file; `finish(tensors)` runs on the calling
thread (devices: the host -> device copy).
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from . import residency

_worker: ThreadPoolExecutor | None = None
_worker_pid = 0
_worker_lock = threading.Lock()
_active = None                      # weakref to the stream that last handed out weights
_stats_lock = threading.Lock()
_alive: dict[int, int] = {}         # id(stream) -> widened blocks it holds
_peak = {"blocks": 0, "models": 0}


def _pool() -> ThreadPoolExecutor:
    global _worker, _worker_pid
    with _worker_lock:
        if _worker is None or _worker_pid != os.getpid():   # a forked child has no reader thread
            # One reader for all streams: reads never compete with each other for the disk.
            _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graphrt-block-stream")
            _worker_pid = os.getpid()
        return _worker


def _count(stream_id: int, delta: int) -> None:
    with _stats_lock:
        n = _alive.get(stream_id, 0) + delta
        if n:
            _alive[stream_id] = n
        else:
            _alive.pop(stream_id, None)
        _peak["blocks"] = max(_peak["blocks"], sum(_alive.values()))
        _peak["models"] = max(_peak["models"], len(_alive))


def widened_blocks() -> int:
    """Blocks widened and held by all streams now."""
    with _stats_lock:
        return sum(_alive.values())


def peak() -> dict:
    """Since `reset_peak()`: the most blocks widened at once ("blocks") and the most streams
    (models) holding widened blocks at once ("models")."""
    with _stats_lock:
        return dict(_peak)


def reset_peak() -> None:
    with _stats_lock:
        _peak["blocks"] = sum(_alive.values())
        _peak["models"] = len(_alive)


class _Widened:
    """One block's widened weights, counted while held; `on_drop(weights)` when dropped."""
    __slots__ = ("k", "weights", "stream_id", "on_drop")

    def __init__(self, k: int, weights, stream_id: int, on_drop=None):
        self.k, self.weights, self.stream_id, self.on_drop = k, weights, stream_id, on_drop
        _count(stream_id, 1)

    def drop(self) -> None:
        if self.weights is not None:
            weights, self.weights = self.weights, None
            if self.on_drop is not None:
                self.on_drop(weights)
            _count(self.stream_id, -1)


class _Held:
    """A stream's widened blocks and its read-ahead; outlives the stream only to be dropped."""

    def __init__(self):
        self.blocks: dict[int, _Widened] = {}   # keep: every block read so far; else the current one
        self.pending = None                     # (k, future) of the block being read ahead

    def drop_pending(self, wait: bool = True) -> None:
        if self.pending is None:
            return
        _, fut = self.pending
        self.pending = None
        if wait:
            try:
                fut.result().drop()
            except Exception:
                pass
        else:
            fut.add_done_callback(lambda f: f.exception() is None and f.result().drop())

    def drop_all(self, wait: bool = True) -> None:
        self.drop_pending(wait)
        for w in self.blocks.values():
            w.drop()
        self.blocks.clear()


class BlockStream:
    def __init__(self, read: Callable[[int], list], n_blocks: int, block_nbytes: int, keep: bool = False,
                 name: str = "", finish: Callable[[list], list] | None = None, prefetch: bool = True,
                 buffers=None):
        """`read(k)`: block k's widened host tensors (runs on the reader thread); `finish`: what
        the calling thread does with them before use (devices: the copy to the device);
        `buffers`: host memory to recycle, with `give(weights)` (a streamed block is done: its
        memory may be read into again) and `clear()` (on release)."""
        self._read, self.n_blocks, self.block_nbytes = read, int(n_blocks), int(block_nbytes)
        self.keep, self.name, self._finish, self.prefetch = keep, name, finish, prefetch
        self._buffers = None if keep else buffers
        self._lock = threading.RLock()
        self._held = _Held()
        self._reserved = False                  # room asked of the residency registry since the last release
        self.stats = {"blocks_read": 0, "read_s": 0.0, "wait_s": 0.0}   # reads (any thread), time `get` waited
        residency.track(self, name or "transformer blocks")
        weakref.finalize(self, self._held.drop_all, False)

    # -- what the residency registry sees ----------------------------------------------------------
    def resident_nbytes(self) -> int:
        return len(self._held.blocks) * self.block_nbytes

    def release(self) -> None:
        """Drop every widened block (and the one being read ahead); the next `get` reads again."""
        with self._lock:
            self._held.drop_all()
            self._reserved = False
            if self._buffers is not None:
                self._buffers.clear()

    # -- handing out weights -----------------------------------------------------------------------
    def get(self, k: int) -> list:
        """Block k's weights (its `weights()` order), widened; reads the next one ahead."""
        with self._lock:
            self._activate()
            blocks = self._held.blocks
            held = blocks.get(k)
            if held is None:
                held = self._take_pending(k) or self._load(k)
                if not self.keep:                 # streaming: the previous block goes
                    for w in blocks.values():
                        w.drop()
                    blocks.clear()
                blocks[k] = held
            residency.touch(self)
            if self.prefetch:
                self._read_ahead(k)
            return held.weights

    def _activate(self) -> None:
        global _active
        other = _active() if _active is not None else None
        if other is not self:
            if other is not None and not other.keep:
                other.release()                 # one model's blocks widened at a time
            _active = weakref.ref(self)
        if self._reserved:
            return
        self._reserved = True
        need = (self.n_blocks - len(self._held.blocks)) * self.block_nbytes if self.keep else 2 * self.block_nbytes
        residency.reserve(need, self)

    def _load(self, k: int) -> _Widened:
        t0 = time.perf_counter()
        held = self._load_ahead(k)
        self.stats["wait_s"] += time.perf_counter() - t0
        if self._finish is not None:
            held.weights = self._finish(held.weights)
        return held

    def _load_ahead(self, k: int) -> _Widened:
        t0 = time.perf_counter()
        weights = self._read(k)
        self.stats["read_s"] += time.perf_counter() - t0
        self.stats["blocks_read"] += 1
        return _Widened(k, weights, id(self), self._buffers.give if self._buffers is not None else None)

    def _take_pending(self, k: int) -> _Widened | None:
        if self._held.pending is None:
            return None
        pk, fut = self._held.pending
        self._held.pending = None
        t0 = time.perf_counter()
        held = fut.result()
        self.stats["wait_s"] += time.perf_counter() - t0
        if pk != k:                          # read ahead for another order (step caching): not needed
            held.drop()
            return None
        if self._finish is not None:
            held.weights = self._finish(held.weights)
        return held

    def _read_ahead(self, k: int) -> None:
        if self._held.pending is not None:
            return
        if self.keep:
            nxt = next((j for j in range(k + 1, self.n_blocks) if j not in self._held.blocks), None)
            if nxt is None:
                return
        else:
            if self.n_blocks < 2:
                return
            nxt = (k + 1) % self.n_blocks   # after the last block: the first, for the next call
        self._held.pending = (nxt, _pool().submit(self._load_ahead, nxt))
