"""The oneDNN convolutions and feed-forward (nodes/wan/onednn.py) against torch, over every way they split work."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from nodes.wan.backend import conv as conv_mod
from nodes.wan.backend import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason=f"MindSpore's oneDNN: {onednn.unavailable_reason()}")


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def torch_conv(x, w, b, stride, padding):
    xt = torch.from_numpy(x)
    pads = [p if isinstance(p, tuple) else (p, p) for p in padding]
    if any(a != b_ for a, b_ in pads):
        # torch pads symmetrically only: pad explicitly (F.pad takes the last dim first).
        flat = [v for a, b_ in reversed(pads) for v in (a, b_)]
        xt = torch.nn.functional.pad(xt, flat)
        pads = [(0, 0)] * len(pads)
    fn = torch.nn.functional.conv3d if x.ndim == 5 else torch.nn.functional.conv2d
    return fn(xt, torch.from_numpy(w), None if b is None else torch.from_numpy(b), stride,
              [a for a, _ in pads]).numpy()


CASES = [
    # x shape, O, kernel, stride, padding
    ((1, 16, 5, 9, 11), 24, (3, 3, 3), (1, 1, 1), (0, 1, 1)),      # one item, O split in 8-channel blocks (16 | 8)
    ((1, 12, 4, 7, 10), 40, (3, 3, 3), (1, 1, 1), (1, 1, 1)),      # uneven split (24 | 16)
    ((1, 8, 3, 6, 6), 19, (3, 3, 3), (1, 1, 1), (0, 1, 1)),        # O not a multiple of 8: the last slice takes the rest
    ((3, 6, 5, 8, 9), 7, (3, 1, 1), (2, 1, 1), (0, 0, 0)),         # batch split 2 | 1, time-only kernel, stride
    ((1, 6, 5, 8, 9), 3, (3, 3, 3), (1, 1, 1), (1, 1, 1)),         # few output channels: one part
    ((2, 5, 9, 11), 16, (3, 3), (2, 2), ((0, 1), (0, 1))),         # the encoder's asymmetric-pad stride-2 conv
    ((1, 12, 7, 6), 32, (2, 2), (1, 1), (1, 1)),                   # upsample phase kernels, O split
    ((1, 16, 4, 11, 6), 3, (3, 3, 3), (1, 1, 1), (0, 1, 1)),       # few output channels, one item: row bands
    ((1, 8, 13, 7), 5, (3, 3), (2, 2), ((1, 0), (0, 1))),          # row bands with stride and one-sided pads
]


@pytest.mark.parametrize("parts", ["1", "2", "3"])
@pytest.mark.parametrize("shape,out,kernel,stride,padding", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(shape, out, kernel, stride, padding, bias, parts, monkeypatch):
    monkeypatch.setenv("GRAPHRT_CPU_CONV_THREADS", parts)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((out, shape[1]) + kernel, dtype=np.float32)
    b = rng.standard_normal(out, dtype=np.float32) if bias else None
    y = onednn.conv(ms.Tensor(x), ms.Tensor(w), None if b is None else ms.Tensor(b), stride, padding)
    expect = torch_conv(x, w, b, stride, padding)
    assert y.shape == expect.shape
    assert rel_err(y.asnumpy(), expect) < 1e-5


def test_splits_work_as_documented(monkeypatch):
    key = ((1, 12, 4, 7, 10), (40, 12, 3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), True, 2)
    plan = onednn._plan(key)
    assert plan.mode == "channels"
    assert [wo // (12 * 27 * 4) for wo, _, _ in plan.offsets] == [0, 24]  # 8-channel blocks: 24 | 16
    assert len(plan.sources) == 1  # both channel slices convolve one reordered input
    assert len(plan.sources[0][1]) == 1  # 12 channels: not split for the reorder
    plan = onednn._plan(((3, 6, 5, 8, 9), (7, 6, 3, 1, 1), (2, 1, 1), (0, 0, 0), (0, 0, 0), False, 2))
    assert plan.mode == "batch" and len(plan.parts) == 2 and len(plan.sources) == 2
    plan = onednn._plan(((1, 32, 5, 6, 6), (16, 32, 3, 3, 3), (1, 1, 1), (0, 1, 1), (0, 1, 1), True, 2, None, None,
                         (2, 3)))
    assert len(plan.sources[0][1]) == 4  # 2 pieces x 2 channel blocks, reordered in parallel
    plan = onednn._plan(((1, 32, 5, 9, 6), (3, 32, 3, 3, 3), (1, 1, 1), (0, 1, 1), (0, 1, 1), True, 2))
    assert plan.mode == "rows" and len(plan.parts) == 2  # rows 0-4 | 5-8, each reading its rows plus a halo


def test_output_owns_its_memory():
    """The result is a new buffer: changing the input afterwards leaves it alone, and it outlives the plan cache."""
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.standard_normal((1, 8, 3, 6, 6), dtype=np.float32))
    w = ms.Tensor(rng.standard_normal((16, 8, 3, 3, 3), dtype=np.float32))
    y = onednn.conv(x, w, None, (1, 1, 1), (0, 1, 1))
    before = y.asnumpy().copy()
    x.asnumpy()[...] = 0  # asnumpy shares the CPU tensor's buffer
    onednn._plans.clear()
    assert np.array_equal(y.asnumpy(), before)


def test_non_contiguous_input():
    rng = np.random.default_rng(2)
    big = rng.standard_normal((1, 8, 6, 9, 9), dtype=np.float32)
    w = rng.standard_normal((8, 8, 3, 3, 3), dtype=np.float32)
    x = ms.Tensor(big)[:, :, 1:5]
    y = onednn.conv(x, ms.Tensor(w), None, (1, 1, 1), (0, 1, 1)).asnumpy()
    assert rel_err(y, torch_conv(np.ascontiguousarray(big[:, :, 1:5]), w, None, (1, 1, 1), (0, 1, 1))) < 1e-5


def test_plan_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(onednn, "PLAN_CACHE_SIZE", 2)
    onednn._plans.clear()
    w = ms.Tensor(np.ones((8, 4, 3, 3), np.float32))
    for size in (5, 6, 7):
        onednn.conv(ms.Tensor(np.ones((1, 4, size, size), np.float32)), w, None, (1, 1), (1, 1))
    assert len(onednn._plans) == 2


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="smaller than the kernel"):
        onednn.conv(ms.Tensor(np.ones((1, 4, 2, 2), np.float32)), ms.Tensor(np.ones((8, 4, 3, 3), np.float32)),
                    None, (1, 1), (0, 0))
    with pytest.raises(TypeError, match="float32"):
        onednn.conv(ms.Tensor(np.ones((1, 4, 5, 5), np.float16)), ms.Tensor(np.ones((8, 4, 3, 3), np.float16)),
                    None, (1, 1), (1, 1))


def test_conv_entry_point_routes_here_on_cpu(monkeypatch):
    """conv3d/conv2d pick oneDNN on CPU float32, and fall back to MindSpore's kernels for other dtypes."""
    monkeypatch.setattr(conv_mod, "_strategy", None)
    monkeypatch.delenv("GRAPHRT_CPU_CONV", raising=False)
    assert conv_mod.cpu_strategy() == "onednn"
    calls = []
    real = onednn.conv
    monkeypatch.setattr(onednn, "conv", lambda *a, **k: calls.append(a) or real(*a, **k))
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 6, 6), dtype=np.float32)
    w = np.random.default_rng(4).standard_normal((8, 4, 3, 3, 3), dtype=np.float32)
    conv_mod.conv3d(ms.Tensor(x), ms.Tensor(w), None, 1, (0, 1, 1))
    assert len(calls) == 1
    y16 = conv_mod.conv3d(ms.Tensor(x).astype(ms.float16), ms.Tensor(w).astype(ms.float16), None, 1, (0, 1, 1))
    assert len(calls) == 1 and y16.dtype == ms.float16


def test_forced_strategy(monkeypatch):
    monkeypatch.setattr(conv_mod, "_strategy", None)
    monkeypatch.setenv("GRAPHRT_CPU_CONV", "im2col")
    assert conv_mod.cpu_strategy() == "im2col"
    monkeypatch.setattr(conv_mod, "_strategy", None)
    monkeypatch.setenv("GRAPHRT_CPU_CONV", "fast")
    with pytest.raises(ValueError, match="GRAPHRT_CPU_CONV='fast'"):
        conv_mod.cpu_strategy()


def test_unloadable_library_is_reported(monkeypatch):
    monkeypatch.setattr(onednn, "_lib", None)
    monkeypatch.setattr(onednn, "_load_error", "OSError: no libdnnl.so in /nowhere")
    assert not onednn.available()
    with pytest.raises(onednn.OneDNNError, match="no libdnnl.so"):
        onednn.conv(ms.Tensor(np.ones((1, 4, 5, 5), np.float32)), ms.Tensor(np.ones((8, 4, 3, 3), np.float32)),
                    None, (1, 1), (1, 1))


@pytest.mark.parametrize("parts", ["1", "2", "3"])
@pytest.mark.parametrize("shape", [(1, 6, 3, 5, 7), (2, 6, 2, 4, 5), (3, 6, 5, 7)])
@pytest.mark.parametrize("out", [4, 24])
def test_upsample_conv2d_matches_torch(shape, out, parts, monkeypatch):
    """Phases written in place into a video's [B,O,T,2H,2W] (frames a strided batch) or an image batch."""
    monkeypatch.setenv("GRAPHRT_CPU_CONV_THREADS", parts)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((out, 6, 3, 3), dtype=np.float32)
    b = rng.standard_normal(out, dtype=np.float32)
    xt = torch.from_numpy(x)
    if x.ndim == 5:
        xt = xt.permute(0, 2, 1, 3, 4).reshape(-1, *shape[1:2], *shape[3:])
    expect = torch.nn.functional.conv2d(torch.nn.functional.interpolate(xt, scale_factor=2.0, mode="nearest"),
                                        torch.from_numpy(w), torch.from_numpy(b), padding=1)
    if x.ndim == 5:
        expect = expect.reshape(shape[0], shape[2], out, 2 * shape[3], 2 * shape[4]).permute(0, 2, 1, 3, 4)
    y = conv_mod.upsample_conv2d(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b))
    assert conv_mod.cpu_strategy() == "onednn"
    assert y.shape == tuple(expect.shape)
    assert rel_err(y.asnumpy(), expect.numpy()) < 1e-5


@pytest.mark.parametrize("parts", ["1", "2"])
@pytest.mark.parametrize("shape,out,cached", [((1, 16, 4, 6, 7), 24, 2), ((2, 8, 1, 5, 5), 8, 2), ((1, 24, 3, 5, 6), 3, 1)])
def test_prefix_is_concatenated_by_the_reorders(shape, out, cached, parts, monkeypatch):
    """conv(x, prefix=cache) equals the conv of cat([cache, x]) along time, front zero padding included."""
    monkeypatch.setenv("GRAPHRT_CPU_CONV_THREADS", parts)
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape, dtype=np.float32)
    cache = rng.standard_normal(shape[:2] + (cached,) + shape[3:], dtype=np.float32)
    w = rng.standard_normal((out, shape[1], 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(out, dtype=np.float32)
    front = 2 - cached
    y = onednn.conv(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b), (1, 1, 1), ((front, 0), 1, 1), prefix=ms.Tensor(cache))
    expect = torch_conv(np.concatenate([cache, x], 2), w, b, (1, 1, 1), ((front, 0), (1, 1), (1, 1)))
    assert rel_err(y.asnumpy(), expect) < 1e-5
    with pytest.raises(ValueError, match="does not fit"):
        onednn.conv(ms.Tensor(x), ms.Tensor(w), None, (1, 1, 1), (0, 1, 1), prefix=ms.Tensor(cache[:, :, :, 1:]))


def test_concurrent_callers(monkeypatch):
    """Convolutions called from several threads at once (e.g. an engine worker and the main thread) stay correct."""
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setenv("GRAPHRT_CPU_CONV_THREADS", "2")
    onednn._plans.clear()
    rng = np.random.default_rng(7)
    cases = []
    for size in (6, 7, 8, 9):
        x = rng.standard_normal((1, 16, 4, size, size), dtype=np.float32)
        w = rng.standard_normal((24, 16, 3, 3, 3), dtype=np.float32)
        cases.append((x, w, torch_conv(x, w, None, (1, 1, 1), (0, 1, 1))))

    def run(case):
        x, w, expect = case
        return rel_err(onednn.conv(ms.Tensor(x), ms.Tensor(w), None, (1, 1, 1), (0, 1, 1)).asnumpy(), expect)

    with ThreadPoolExecutor(4) as pool:
        errs = list(pool.map(run, cases * 3))
    assert max(errs) < 1e-5


def test_empty_prefix_is_ignored():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 8, 3, 5, 5), dtype=np.float32)
    w = rng.standard_normal((8, 8, 3, 3, 3), dtype=np.float32)
    y = onednn.conv(ms.Tensor(x), ms.Tensor(w), None, (1, 1, 1), (0, 1, 1),
                    prefix=ms.Tensor(np.zeros((1, 8, 0, 5, 5), np.float32)))
    assert rel_err(y.asnumpy(), torch_conv(x, w, None, (1, 1, 1), (0, 1, 1))) < 1e-5


@pytest.mark.parametrize("hidden, parts, rows", [(200, "1", 1024), (600, "2", 1024), (1100, "3", 1024),
                                                 (600, "5", 1024), (600, "2", 4), (300, "1", 1)])
def test_feed_forward_matches_torch(monkeypatch, hidden, parts, rows):
    """gelu_tanh(x W1ᵀ + b1) W2ᵀ + b2, its hidden units split over `parts` threads (at least 256 each),
    `rows` token rows at a time (10 rows: one chunk, 4+4+2, or ten of 1)."""
    monkeypatch.setenv("GRAPHRT_CPU_CONV_THREADS", parts)
    monkeypatch.setattr(onednn, "FEED_FORWARD_ROWS", rows)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 5, 40), dtype=np.float32)
    w1 = rng.standard_normal((hidden, 40), dtype=np.float32) * 0.3
    b1 = rng.standard_normal(hidden, dtype=np.float32)
    w2 = rng.standard_normal((24, hidden), dtype=np.float32) * 0.1
    b2 = rng.standard_normal(24, dtype=np.float32)
    t = [torch.from_numpy(a) for a in (x, w1, b1, w2, b2)]
    h = torch.nn.functional.gelu(t[0] @ t[1].T + t[2], approximate="tanh")
    ref = (h @ t[3].T + t[4]).numpy()
    y = onednn.feed_forward(*[ms.Tensor(a) for a in (x, w1, b1, w2, b2)]).asnumpy()
    assert y.shape == (2, 5, 24) and rel_err(y, ref) < 1e-5


def test_feed_forward_names_bad_input():
    rng = np.random.default_rng(9)
    x, w1, b1 = (ms.Tensor(rng.standard_normal(s, dtype=np.float32)) for s in ((3, 8), (16, 8), (16,)))
    w2, b2 = ms.Tensor(rng.standard_normal((4, 16), dtype=np.float32)), ms.Tensor(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"input \(3, 8\) does not fit w1 \(16, 8\), b1 \(16,\), w2 \(4, 15\)"):
        onednn.feed_forward(x, w1, b1, ms.Tensor(rng.standard_normal((4, 15), dtype=np.float32)), b2)
    with pytest.raises(ValueError, match="activation 'relu' is not one of"):
        onednn.feed_forward(x, w1, b1, w2, b2, activation="relu")
    with pytest.raises(TypeError, match="float32"):
        onednn.feed_forward(x.astype(ms.float16), w1, b1, w2, b2)
