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
