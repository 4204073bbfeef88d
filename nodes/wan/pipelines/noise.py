"""Initial noise from a seed, identical on every device.

Drawn with numpy's PCG64 generator rather than a framework RNG, so seed 7
gives the same video on CPU, GPU and Ascend, and the same array can be fed to
another implementation (diffusers' `latents=`) for comparison.
"""
from __future__ import annotations

import numpy as np


def make_noise(seed: int, shape) -> np.ndarray:
    """Standard normal float32 noise of `shape` from `seed` (numpy default_rng)."""
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return np.random.default_rng(int(seed)).standard_normal(tuple(shape), dtype=np.float32)
