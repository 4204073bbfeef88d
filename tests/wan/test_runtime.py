"""Runtime settings the Wan package applies for the device it runs on."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = ("import nodes.wan, mindspore as ms; from mindspore._c_expression import RuntimeConf; "
         "print(RuntimeConf.get_instance().is_launch_blocking())")


@pytest.mark.parametrize("env, expected", [({}, "True"), ({"GRAPHRT_ASYNC_LAUNCH": "1"}, "False")])
def test_cpu_launches_synchronously_unless_asked(env, expected):
    # A fresh process: the setting only applies before MindSpore runs its first op.
    full = {k: v for k, v in os.environ.items() if k != "GRAPHRT_ASYNC_LAUNCH"}
    full.update(env, GLOG_v="3")
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=full, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected


ON_ASCEND = """
import mindspore as ms
ms.get_current_device = lambda: ("Ascend", 0)   # what MindSpore reports after ms.set_device("Ascend")
calls = []
ms.runtime.launch_blocking = lambda: calls.append("launch_blocking")
from nodes.wan.models import layers
from nodes.wan.backend import runtime
from nodes.wan.models.transformer_block import onednn_matmuls
runtime.check_compute_dtype("bfloat16")          # bf16 compute is refused on CPU only
print(runtime.device(), runtime.TILE_BROADCASTS, runtime.ROW_STATS_BY_MATMUL, onednn_matmuls(ms.float32), calls)
"""


def test_accelerator_keeps_mindspore_defaults():
    """The import-time device choices as an Ascend (or GPU) process makes them, with MindSpore's device
    query answering "Ascend": asynchronous launch kept, no CPU-only tiling, matmul statistics or oneDNN."""
    env = {**os.environ, "GLOG_v": "3"}
    out = subprocess.run([sys.executable, "-c", ON_ASCEND], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "Ascend False False False []"
