"""Tables the Wan transformer needs at full precision, built in numpy.

MindSpore's CPU exp/sin/cos are less accurate than torch's (mindspore_cpu.md
§7), and these small tables feed every token, so they are computed here.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) channel split of a head: 44/42/42 for head_dim 128."""
    h = w = 2 * (head_dim // 6)
    return head_dim - h - w, h, w


@lru_cache(maxsize=8)
def _axis_tables(dim: int, max_len: int, theta: float):
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim)
    angles = np.outer(np.arange(max_len, dtype=np.float64), freqs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@lru_cache(maxsize=32)
def rope_cos_sin(head_dim: int, frames: int, height: int, width: int, max_len: int = 1024, theta: float = 10000.0):
    """cos, sin of shape [L, head_dim/2] for tokens in (f, h, w) row-major order.

    One value per rotated pair (diffusers repeats each twice and reads even/odd
    lanes; the values are the same).
    """
    if max(frames, height, width) > max_len:
        raise ValueError(f"latent grid {frames}x{height}x{width} exceeds rope_max_seq_len={max_len}")
    parts_cos, parts_sin = [], []
    for axis, (dim, n) in enumerate(zip(rope_split(head_dim), (frames, height, width))):
        c, s = _axis_tables(dim, max_len, theta)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = n
        grid = (frames, height, width, dim // 2)
        parts_cos.append(np.broadcast_to(c[:n].reshape(shape), grid))
        parts_sin.append(np.broadcast_to(s[:n].reshape(shape), grid))
    cos = np.concatenate(parts_cos, axis=-1).reshape(frames * height * width, head_dim // 2)
    sin = np.concatenate(parts_sin, axis=-1).reshape(frames * height * width, head_dim // 2)
    return np.ascontiguousarray(cos), np.ascontiguousarray(sin)


def timestep_sinusoid(timesteps: np.ndarray, dim: int, max_period: float = 10000.0) -> np.ndarray:
    """[N, dim] float32: cos half then sin half (diffusers' Timesteps with flip_sin_to_cos),
    in the same float32 arithmetic torch uses."""
    half = dim // 2
    exponent = (np.float32(-np.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float32)).astype(np.float32)
    args = np.asarray(timesteps, dtype=np.float32).reshape(-1, 1) * freqs[None, :]
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1).astype(np.float32)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb


def rope_pair_rotation(head_dim: int) -> np.ndarray:
    """[d, d] matrix R with x @ R = (-x1, x0, -x3, x2, ...): the rotation's cross term.

    A matmul with one ±1 per column is exact and, unlike strided slicing of
    pairs, fast under ms.jit (31 vs 186 ms at 1,950 tokens × 12 heads).
    """
    r = np.zeros((head_dim, head_dim), np.float32)
    i = np.arange(0, head_dim, 2)
    r[i + 1, i] = -1.0
    r[i, i + 1] = 1.0
    return r
