"""Test-wide setup: quiet MindSpore logs, CPU device, synchronous kernel errors,
and no network (tests build everything they load)."""
import os

os.environ.setdefault("GLOG_v", "3")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    # The tiny preset is generated into a per-session folder, so every run
    # exercises its generation and never depends on a user's cache.
    import tempfile
    os.environ["GRAPHRT_HOME"] = tempfile.mkdtemp(prefix="graphrt-home-")


def pytest_unconfigure(config):
    import shutil
    home = os.environ.get("GRAPHRT_HOME", "")
    if os.path.basename(home).startswith("graphrt-home-"):
        shutil.rmtree(home, ignore_errors=True)
