"""One fp32 forward of the real Wan2.1 T2V 1.3B transformer: ours (MindSpore, eager and
ms.jit) against diffusers (PyTorch) on the same random weights and inputs.

The torch model is built with a fixed seed and saved in the diffusers layout; ours
loads those files. After a warm-up of each, torch and our compiled forward run in
alternating pairs (which one goes first alternates too), so that a shared machine's
slow and fast stretches hit both: the ratio printed is the median of the per-pair
ratios, next to each side's best and median time. Also printed: eager time, peak
RSS and the largest relative difference.

    python benchmarks/transformer_step.py [--quick | --layers 30] [--pairs 5] [--shapes all|small|large]
"""
from __future__ import annotations

import argparse
import atexit
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_v", "3")

SHAPES = [(1, 16, 3, 16, 16), (1, 16, 5, 30, 52)]


def rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def paired(a, b, pairs):
    """Times of a() and b() run in alternating order, `pairs` times each."""
    ta, tb = [], []
    for i in range(pairs):
        for fn, times in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return np.array(ta), np.array(tb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=5, help="torch/ours pairs at 192 tokens (2 at 1,950)")
    ap.add_argument("--shapes", default="all", choices=["all", "small", "large"])
    ap.add_argument("--quick", action="store_true", help="4 layers instead of 30")
    a = ap.parse_args()
    if a.quick:
        a.layers = 4
    import torch
    import mindspore as ms
    from diffusers import WanTransformer3DModel
    ms.set_device("CPU")
    from nodes.wan import load_transformer

    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=a.layers, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6)
    tmp = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, tmp, True)   # the saved model is 5.3 GB
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**cfg).eval()
    ref.save_pretrained(tmp, max_shard_size="2GB")
    ours = load_transformer(tmp, subfolder=None)
    rng = np.random.default_rng(0)
    ctx = rng.standard_normal((1, 512, 4096)).astype(np.float32)
    print(f"Wan2.1 1.3B transformer ({a.layers} layers), fp32, one forward, torch {torch.get_num_threads()} threads")
    shapes = {"all": SHAPES, "small": SHAPES[:1], "large": SHAPES[1:]}[a.shapes]
    for shape in shapes:
        small = shape == SHAPES[0]   # the large shape takes about a minute per forward
        pairs = a.pairs if small else min(a.pairs, 2)
        x = rng.standard_normal(shape).astype(np.float32)
        t = np.array([500], np.int64)
        tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)

        def run_torch():
            with torch.no_grad():
                return ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), return_dict=False)[0].numpy()

        def run_ours():
            return ours(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx)).asnumpy()

        ours._jit_blocks = ours._jit_blocks_ffn = None
        t_eager, o = timed(run_ours, 2 if small else 1)
        ours.compile()
        r, oj = run_torch(), run_ours()   # warm-up; the first compiled call compiles
        t_ref, t_jit = paired(run_torch, run_ours, pairs)
        err = max(np.abs(o - r).max(), np.abs(oj - r).max()) / np.abs(r).max()
        print(f"  latents {list(shape)} ({tokens} tokens), {pairs} alternating pairs:\n"
              f"    torch    best {t_ref.min():6.2f} s, median {np.median(t_ref):6.2f} s\n"
              f"    ours jit best {t_jit.min():6.2f} s, median {np.median(t_jit):6.2f} s | ratio: median of pairs "
              f"{np.median(t_jit / t_ref):.2f}x, best/best {t_jit.min() / t_ref.min():.2f}x "
              f"(pairs: {' '.join(f'{v:.2f}' for v in t_jit / t_ref)})\n"
              f"    ours eager {t_eager:6.2f} s ({t_eager / t_ref.min():.2f}x torch's best) | max rel diff {err:.1e}",
              flush=True)
        ours._jit_blocks = ours._jit_blocks_ffn = None
    print(f"  peak RSS of the process (both models resident): {rss_gb():.1f} GB")
    ref = None   # frees torch's copy before exit
    gc.collect()


if __name__ == "__main__":
    main()
