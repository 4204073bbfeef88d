"""Device and dtype handling shared by the Wan model code.

MindSpore's CPU backend cannot compute in bfloat16 and is slow in float16
(mindspore_cpu.md §0), so the default compute dtype depends on the device.
"""
from __future__ import annotations

import os

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402

_DTYPES = {
    "float32": ms.float32, "fp32": ms.float32,
    "float16": ms.float16, "fp16": ms.float16,
    "bfloat16": ms.bfloat16, "bf16": ms.bfloat16,
}


def device() -> str:
    """'CPU', 'Ascend' or 'GPU' — whatever MindSpore is set to run on."""
    try:
        return ms.get_current_device()[0]
    except Exception:  # older context API
        return ms.get_context("device_target")


def _configure_cpu_launch() -> None:
    """Launch kernels synchronously on CPU unless GRAPHRT_ASYNC_LAUNCH=1.

    PyNative's asynchronous launch runs dispatch threads that compete with the
    kernels for the cores: on a 2-core machine a tiny Wan forward took 0.58 s
    asynchronously and 0.054 s blocking. The setting only takes effect before
    the first op runs, hence at import; accelerators keep asynchronous launch.
    """
    if os.environ.get("GRAPHRT_ASYNC_LAUNCH") == "1" or device() != "CPU":
        return
    try:
        ms.runtime.launch_blocking()
    except Exception:  # an older MindSpore without the runtime API: keep its default
        pass


_configure_cpu_launch()

# Decided once (graph code cannot query the device): broadcasting binary ops are
# slow on MindSpore's CPU backend, so model code materialises the smaller operand.
TILE_BROADCASTS = device() == "CPU"
# Likewise row statistics: MindSpore CPU's ReduceMean and LayerNorm over the last axis are 1.7-4.8x
# slower than a matmul with a ones column plus elementwise ops (`layers.row_mean`).
ROW_STATS_BY_MATMUL = device() == "CPU"


def to_ms_dtype(dtype) -> ms.Type:
    """Accept 'float32' / 'fp16' / 'bfloat16' / a MindSpore dtype / None (float32)."""
    if dtype is None:
        return ms.float32
    if isinstance(dtype, str):
        try:
            return _DTYPES[dtype.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16") from None
    if isinstance(dtype, ms.Type):
        return dtype
    raise TypeError(f"dtype must be a string or a MindSpore dtype, got {type(dtype).__name__}")


def dtype_name(dtype) -> str:
    return {ms.float32: "float32", ms.float16: "float16", ms.bfloat16: "bfloat16"}.get(to_ms_dtype(dtype), str(dtype))


def check_compute_dtype(dtype) -> ms.Type:
    """bf16 compute has no CPU kernels: refuse it up front instead of failing mid-run."""
    dt = to_ms_dtype(dtype)
    if dt == ms.bfloat16 and device() == "CPU":
        raise ValueError("bfloat16 compute is not supported by MindSpore on CPU; "
                         "load with dtype='float32' (bf16 checkpoints are upcast on load)")
    return dt
