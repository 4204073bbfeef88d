"""Helpers shared by the parity tests against diffusers/transformers."""
import numpy as np


def rel_err(ours, ref) -> float:
    """max |a-b| / max |b|: the tolerance measure used by every parity test."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def to_numpy(x):
    """MindSpore tensor / torch tensor / array -> float64 numpy."""
    if hasattr(x, "asnumpy"):
        return x.asnumpy()
    if hasattr(x, "detach"):
        return x.detach().float().numpy()
    return np.asarray(x)
