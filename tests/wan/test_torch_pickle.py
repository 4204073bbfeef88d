"""PyTorch .pth checkpoints read without torch (nodes/wan/torch_pickle.py), against what torch saved."""
from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np
import pytest
import torch

from nodes.wan.checkpoints.safetensors_io import CheckpointError
from nodes.wan.checkpoints.torch_pickle import TorchPickleFile, is_torch_file
from nodes.wan.checkpoints.checkpoint import Checkpoint


def state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 6, generator=g)
    return collections.OrderedDict([
        ("f32", torch.randn(3, 4, generator=g)),
        ("f16", torch.randn(2, 3, generator=g).half()),
        ("bf16", torch.randn(4, 2, generator=g).bfloat16()),
        ("f64", torch.randn(3, generator=g).double()),
        ("i64", torch.arange(7)),
        ("mask", torch.tensor([True, False, True])),
        ("transposed", base.t()),            # non-contiguous strides
        ("rows", base[2:]),                  # a view at an offset into a shared storage
        ("column", base[:, 1]),              # stride 6
        ("param", torch.nn.Parameter(torch.randn(2, 2, generator=g))),
        ("scalar", torch.tensor(3.5)),
        ("empty", torch.zeros(0, 3)),
        ("fp8", torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn)),
    ])


def expected(t):
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn):
        t = t.float()
    return t.numpy()


@pytest.mark.parametrize("wrapper", [None, "state_dict"])
def test_every_tensor_reads_back_as_torch_saved_it(tmp_path, wrapper):
    sd = state_dict()
    path = tmp_path / "weights.pth"
    torch.save(sd if wrapper is None else {wrapper: sd, "epoch": 3}, path)
    f = TorchPickleFile(path)
    assert list(f.keys()) == list(sd)
    for k, t in sd.items():
        got = f.get(k)
        assert f.shape(k) == tuple(t.shape), k
        assert got.shape == tuple(t.shape) and got.flags["C_CONTIGUOUS"], k
        assert np.array_equal(got, expected(t)), k
    assert f.dtype("bf16") == "BF16" and f.get("bf16", widen=False).dtype == np.uint16
    assert np.array_equal(f.get("bf16", widen=False), sd["bf16"].view(torch.int16).numpy().view(np.uint16))
    assert Checkpoint([path]).get("rows").shape == (3, 6)   # loaders pick the reader by file type


def test_file_type_is_told_by_name_or_signature(tmp_path):
    path = tmp_path / "no_suffix"
    torch.save({"w": torch.zeros(2)}, path)
    assert is_torch_file(path) and is_torch_file(tmp_path / "x.pt") and not is_torch_file(tmp_path / "x.safetensors")
    assert np.array_equal(Checkpoint([path]).get("w"), np.zeros(2, np.float32))


def test_objects_other_than_tensors_are_refused(tmp_path):
    import argparse
    path = tmp_path / "with_args.pth"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load argparse\.Namespace"):
        TorchPickleFile(path)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"w": Exploit()}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load (posix|os)\.system"):
        TorchPickleFile(path)
    assert not marker.exists()


def test_truncated_corrupt_and_legacy_files_are_named(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth: not a PyTorch checkpoint, or truncated"):
        TorchPickleFile(cut)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        TorchPickleFile(legacy)
    short = tmp_path / "short.pth"   # a zip whose storage is shorter than the tensor needs
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            dst.writestr(info, body[:100] if "/data/" in info.filename else body)
    with pytest.raises(CheckpointError, match="'w' is missing or short"):
        TorchPickleFile(short)
    garbage = tmp_path / "garbage.pth"
    with zipfile.ZipFile(garbage, "w") as z:
        z.writestr("g/data.pkl", b"\x80\x02not a pickle")
    with pytest.raises(CheckpointError, match="corrupt data.pkl"):
        TorchPickleFile(garbage)
    with zipfile.ZipFile(tmp_path / "empty.pth", "w") as z:
        z.writestr("e/data.pkl", pickle.dumps({"epoch": 3}, protocol=2))
    with pytest.raises(CheckpointError, match="holds no tensors"):
        TorchPickleFile(tmp_path / "empty.pth")


def test_rows_are_read_alone_as_get_would_give_them(tmp_path):
    """`get_rows` (a token embedding looked up without loading it) equals `get(key)[rows]` for every
    layout: contiguous, transposed, at an offset, bf16 and fp8; repeated rows and a 2-D index too."""
    sd = state_dict()
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    f = TorchPickleFile(path)
    for k in ("f32", "f16", "bf16", "transposed", "rows", "fp8", "i64", "column"):
        n = f.shape(k)[0]
        for rows in (np.array([n - 1, 0, n - 1]), np.array([[0, n - 1], [1 % n, 0]])):
            got = f.get_rows(k, rows)
            assert np.array_equal(got, f.get(k)[rows]) and got.dtype == f.get(k).dtype, k
    with pytest.raises(IndexError, match="out of range"):
        f.get_rows("f32", np.array([3]))
