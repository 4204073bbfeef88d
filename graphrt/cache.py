"""The output cache: entries keyed by a node's signature, kept under a policy.

A signature hashes the node's class, its constant inputs, its fingerprint and
the signatures of the nodes its links come from (never node ids), so identical
sub-graphs in different workflows share entries and a changed value
invalidates exactly that node and what depends on it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def signature(class_name: str, constants: dict, fingerprint, parents: list) -> str:
    """parents: [(input_name, parent_signature, output_index)] sorted by input name."""
    blob = json.dumps([class_name, constants, fingerprint, parents], sort_keys=True, default=repr,
                      separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def estimate_nbytes(value, _depth: int = 0) -> int:
    """Size of a cached value: `cache_nbytes()`, `nbytes`, or the sum over containers."""
    if _depth > 6:
        return 0
    fn = getattr(value, "cache_nbytes", None)
    if callable(fn):
        try:
            return int(fn())
        except Exception:
            return 0
    nb = getattr(value, "nbytes", None)
    if isinstance(nb, (int, float)) and not isinstance(nb, bool):
        return int(nb)
    if isinstance(value, dict):
        return sum(estimate_nbytes(v, _depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(estimate_nbytes(v, _depth + 1) for v in value)
    return 64


@dataclass
class Entry:
    outputs: tuple
    nbytes: int
    last_run: int
    last_tick: int
    on_disk: bool = False


class OutputCache:
    """Policies: 'last-run' (default), 'lru:N', 'budget:SIZE' (e.g. 8GB), 'none'.

    With a `disk` tier (`disk_cache.DiskTier`), outputs of nodes that ask for it (`DISK_CACHE`)
    and outputs the budget evicts are also written there, and a lookup that misses in memory is
    served from disk, across runs and processes."""

    def __init__(self, policy: str = "last-run", disk=None):
        self.policy = policy
        self.kind, self.limit = self.parse(policy)
        self.disk = disk
        self.entries: dict[str, Entry] = {}
        self.run_id = 0
        self._tick = 0

    @staticmethod
    def parse(policy: str):
        p = str(policy).strip().lower()
        if p in ("last-run", "classic", "default"):
            return "last-run", None
        if p == "none":
            return "none", None
        m = re.fullmatch(r"lru:(\d+)", p)
        if m:
            return "lru", int(m.group(1))
        m = re.fullmatch(r"budget:([\d.]+)\s*([kmgt]i?b?|b)?", p)
        if m:
            unit = (m.group(2) or "").upper()
            unit = unit if unit.endswith("B") or unit == "" else unit + "B"
            return "budget", int(float(m.group(1)) * _UNITS[unit])
        raise ValueError(f"unknown cache policy {policy!r}; use 'last-run', 'lru:N', 'budget:8GB' or 'none'")

    def begin_run(self):
        self.run_id += 1

    def get(self, sig: str):
        e = self.entries.get(sig)
        if e is None:
            value = self.disk.get(sig) if self.disk is not None else None
            if value is not None:
                self._store(sig, value, on_disk=True)
            return value
        self._tick += 1
        e.last_run, e.last_tick = self.run_id, self._tick
        return e.outputs

    def touch(self, sig: str) -> bool:
        """Count `sig` as used by this run without loading it; False if it is in no tier."""
        e = self.entries.get(sig)
        if e is not None:
            self._tick += 1
            e.last_run, e.last_tick = self.run_id, self._tick
            return True
        return self.disk is not None and sig in self.disk

    def put(self, sig: str, outputs: tuple, persist: bool = False) -> None:
        """Keep `outputs` under `sig`; `persist` also writes them to the disk tier, if there is one."""
        on_disk = bool(persist and self.disk is not None and self.disk.put(sig, outputs))
        if self.kind != "none":
            self._store(sig, outputs, on_disk)

    def _store(self, sig: str, outputs: tuple, on_disk: bool) -> None:
        if self.kind == "none":
            return
        self._tick += 1
        self.entries[sig] = Entry(outputs, estimate_nbytes(outputs), self.run_id, self._tick, on_disk)
        if self.kind == "lru":
            while len(self.entries) > self.limit:
                oldest = min(self.entries, key=lambda k: self.entries[k].last_tick)
                del self.entries[oldest]
        elif self.kind == "budget":
            self._fit_budget(protect=sig)

    def _fit_budget(self, protect=None):
        total = sum(e.nbytes for e in self.entries.values())
        while total > self.limit and len(self.entries) > (1 if protect in self.entries else 0):
            # Evict what is large and long unused first: size weighted by age in runs.
            def score(k):
                e = self.entries[k]
                return (k != protect, (self.run_id - e.last_run + 1) * max(e.nbytes, 1), -e.last_tick)
            victim = max(self.entries, key=score)
            if victim == protect:
                break
            total -= self._evict(victim).nbytes
        if protect in self.entries and self.entries[protect].nbytes > self.limit:
            self._evict(protect)  # larger than the whole budget: do not keep in memory

    def _evict(self, sig: str) -> Entry:
        e = self.entries.pop(sig)
        if self.disk is not None and not e.on_disk:
            self.disk.put(sig, e.outputs)      # what memory cannot hold is kept on disk where it can be
        return e

    def end_run(self):
        if self.kind == "last-run":
            for k in [k for k, e in self.entries.items() if e.last_run != self.run_id]:
                del self.entries[k]

    def clear(self):
        self.entries.clear()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def __len__(self):
        return len(self.entries)

    def __contains__(self, sig):
        return sig in self.entries or (self.disk is not None and sig in self.disk)
