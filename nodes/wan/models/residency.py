"""Which models hold widened weights in memory, and releasing them to stay under the budget.

Models whose weights can be dropped and read again from their file register here: the text
encoder and CLIP (`OnDemand`: built on first use), a transformer whose blocks are widened on
demand (`block_stream.BlockStream`). Before a model widens weights it calls `reserve(nbytes)`,
which releases the least recently used *other* releasable models until the process's resident
set plus `nbytes` fits `backend.memory.memory_budget()` — so the text encoder goes after
encoding when the transformer needs the room, and one Wan2.2 expert goes when the other is
widened. A released model stays usable: its next use builds it again.
"""
from __future__ import annotations

import itertools
import threading
import weakref
from typing import Callable

from ..backend import memory

_lock = threading.RLock()
_clock = itertools.count(1)
_entries: dict = {}            # id(obj) -> _Entry
released_log: list = []        # (name, bytes) of every release, newest last (kept short)


class _Entry:
    __slots__ = ("ref", "last_use", "name")

    def __init__(self, obj, name: str):
        self.ref = weakref.ref(obj)          # weak: registering keeps nothing alive
        self.name = name
        self.last_use = next(_clock)

    def held(self) -> int:
        obj = self.ref()
        return 0 if obj is None else int(obj.resident_nbytes())

    def release(self) -> None:
        obj = self.ref()
        if obj is not None:
            obj.release()


def track(obj, name: str = "") -> None:
    """Register `obj` (held weakly), which has `resident_nbytes()` (what it holds now) and
    `release()` (drop it; the next use widens it again)."""
    with _lock:
        key = id(obj)
        if key in _entries and _entries[key].ref() is obj:
            return
        entry = _entries[key] = _Entry(obj, name or type(obj).__name__)
        weakref.finalize(obj, _forget, key, entry)


def _forget(key, entry):
    with _lock:
        if _entries.get(key) is entry:
            del _entries[key]


def touch(obj) -> None:
    """`obj` was just used: it is the last to be released."""
    e = _entries.get(id(obj))
    if e is not None:
        e.last_use = next(_clock)


def resident() -> list[tuple[str, int]]:
    """(name, bytes held) of every registered model holding weights, least recently used first."""
    with _lock:
        held = [(e.name, e.held(), e.last_use) for e in list(_entries.values())]
        return [(n, b) for n, b, _ in sorted(held, key=lambda h: h[2]) if b > 0]


def reserve(nbytes: int, owner=None) -> list[str]:
    """Make room for `nbytes` more bytes of `owner`'s weights: release the least recently used
    other models until the resident set plus `nbytes` fits the budget (or nothing is left to
    release). Returns the names of the models released."""
    released = []
    with _lock:
        short = int(nbytes) - memory.room()
        if short <= 0:
            return released
        candidates = sorted((e for k, e in _entries.items() if k != id(owner) and e.ref() is not None),
                            key=lambda e: e.last_use)
        for e in candidates:
            held = e.held()
            if held <= 0:
                continue
            e.release()
            released.append(e.name)
            released_log.append((e.name, held))
            del released_log[:-64]
            short -= held
            if short <= 0:
                break
    if released:
        import gc
        gc.collect()           # the released tensors may sit in reference cycles
    return released


def reserve_working(nbytes: int, owner=None) -> list[str]:
    """Room for `nbytes` of activations about to be allocated (a transformer forward, a VAE decode):
    models not in use are released first if the budget would be exceeded (`reserve`)."""
    return reserve(nbytes, owner)


def release_all() -> list[str]:
    """Release every registered model (e.g. to free memory between jobs); returns their names."""
    with _lock:
        entries = [e for e in _entries.values() if e.held() > 0]
        for e in entries:
            e.release()
    import gc
    gc.collect()
    return [e.name for e in entries]


class OnDemand:
    """A model built on first use, kept while the budget allows and released when another model
    needs the room (`reserve`); the next use builds it again. Calls and attributes go to the model."""

    def __init__(self, build: Callable[[], object], nbytes: int | Callable[[], int], name: str = ""):
        """`nbytes`: what the model holds once built, or a function deciding it at each build (a
        model that may stream its weights holds little: its stream reserves its own room)."""
        self._build, self._name = build, name
        self._plan = nbytes if callable(nbytes) else (lambda n=int(nbytes): n)
        self._nbytes = 0
        self._model = None
        self._lock = threading.Lock()
        track(self, name)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self):
        with self._lock:
            if self._model is None:
                self._nbytes = int(self._plan())
                reserve(self._nbytes, self)
                self._model = self._build()
            touch(self)
            return self._model

    def resident_nbytes(self) -> int:
        return self._nbytes if self._model is not None else 0

    def release(self) -> None:
        self._model = None

    def __call__(self, *args, **kwargs):
        return self.model()(*args, **kwargs)

    def get_parameters(self):
        """The parameters held now (none while released): what the output cache counts."""
        return self._model.get_parameters() if self._model is not None else iter(())

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.model(), name)

    def __repr__(self):
        return f"OnDemand({self._name or '?'}, {'loaded' if self.loaded else 'released'})"
