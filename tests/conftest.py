"""Test-wide setup: quiet MindSpore logs, CPU device, synchronous kernel errors,
and no network (tests build everything they load)."""
import os

os.environ.setdefault("GLOG_v", "3")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _loopback_only():
    """Tests never touch the network, enforced: a connection to anything but this machine fails at once
    (the server tests talk to 127.0.0.1; the shipped ComfyUI templates carry model download URLs that
    nothing may follow)."""
    import ipaddress
    import socket
    connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = False
            if not local:
                raise ConnectionRefusedError(f"tests may not reach the network (connect to {address!r})")
        return connect(self, address)
    socket.socket.connect = guarded


def pytest_configure(config):
    _loopback_only()
    # The tiny preset is generated into a per-session folder, so every run
    # exercises its generation and never depends on a user's cache.
    import tempfile
    os.environ["GRAPHRT_HOME"] = tempfile.mkdtemp(prefix="graphrt-home-")


def pytest_unconfigure(config):
    import shutil
    home = os.environ.get("GRAPHRT_HOME", "")
    if os.path.basename(home).startswith("graphrt-home-"):
        shutil.rmtree(home, ignore_errors=True)
