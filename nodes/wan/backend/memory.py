"""The host memory budget models are loaded under.

`memory_budget()` is the most memory (resident set, bytes) the process should use: the
`GRAPHRT_MEMORY_BUDGET` environment variable ("20GB", "512MiB", a number of bytes) when set —
`python -m graphrt run|serve --memory-budget` sets it — else the RAM available when first asked,
plus what the process already holds, minus a margin for the OS and other programs. Loaders
compare a model's size with `room()` (the budget minus the current resident set) to decide
whether to stream it (`offload="auto"`), and `models.residency` releases encoders and experts
to stay under it.
"""
from __future__ import annotations

import os
import re

ENV = "GRAPHRT_MEMORY_BUDGET"
# Kept free of the RAM available at start: the OS, page cache for streamed weights, other programs.
MARGIN_FRACTION, MARGIN_MIN = 0.10, 2 * 2**30

_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_default: int | None = None


def parse_size(text) -> int:
    """'20GB', '1.5 GiB', '512mb', '1000000' -> bytes (GB = 1e9, GiB = 2**30)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]i?b?|b)?\s*", str(text).lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 20GB, 512MiB or a number of bytes)")
    unit = (m.group(2) or "").upper()
    unit = unit if unit.endswith("B") or unit == "" else unit + "B"
    return int(float(m.group(1)) * _UNITS[unit])


def rss() -> int:
    """The process's resident set now, in bytes."""
    import psutil
    return int(psutil.Process().memory_info().rss)


def peak_rss() -> int:
    """The process's peak resident set, in bytes: Linux's VmHWM, which (unlike ru_maxrss) does not
    carry over the parent's size from before exec; elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def default_budget() -> int:
    """RAM available at the first call plus the process's own resident set, minus the margin."""
    global _default
    if _default is None:
        import psutil
        vm = psutil.virtual_memory()
        margin = max(MARGIN_MIN, int(MARGIN_FRACTION * vm.total))
        _default = max(0, int(vm.available) + rss() - margin)
    return _default


def memory_budget() -> int:
    """The budget in bytes: $GRAPHRT_MEMORY_BUDGET, else `default_budget()`."""
    text = os.environ.get(ENV, "").strip()
    return parse_size(text) if text else default_budget()


def set_memory_budget(size) -> None:
    """Set the budget for this process ('20GB', bytes, or None for the default)."""
    if size is None or size == "":
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = str(parse_size(size))


def room() -> int:
    """Bytes the process may still take: the budget minus its resident set now (may be negative)."""
    return memory_budget() - rss()
