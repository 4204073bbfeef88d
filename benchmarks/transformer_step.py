"""One fp32 forward of the real Wan2.1 T2V 1.3B transformer: ours (MindSpore, eager and
ms.jit) against diffusers (PyTorch) on the same random weights and inputs.

The torch model is built with a fixed seed and saved in the diffusers layout; ours
loads those files. Prints seconds per forward, the ratio ours/torch, peak RSS and
the largest relative difference.

    python benchmarks/transformer_step.py [--quick | --layers 30] [--repeat 2] [--shapes all|small|large]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_v", "3")

SHAPES = [(1, 16, 3, 16, 16), (1, 16, 5, 30, 52)]


def rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, repeat, warmup=True):
    if warmup:
        fn()  # warm-up (and jit compile)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--shapes", default="all", choices=["all", "small", "large"])
    ap.add_argument("--quick", action="store_true", help="4 layers instead of 30")
    a = ap.parse_args()
    if a.quick:
        a.layers = 4
    import numpy as np
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
        warm = shape == SHAPES[0]   # the large shape is timed once, cold (minutes per forward)
        x = rng.standard_normal(shape).astype(np.float32)
        t = np.array([500], np.int64)
        tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
        with torch.no_grad():
            t_ref, r = timed(lambda: ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                                         return_dict=False)[0], a.repeat if warm else 1, warm)
        ours._jit_blocks = None
        t_eager, o = timed(lambda: ours(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx)).asnumpy(),
                           a.repeat if warm else 1, warm)
        r = r.numpy()
        line = (f"  latents {list(shape)} ({tokens} tokens): torch {t_ref:6.2f} s | ours eager {t_eager:6.2f} s "
                f"({t_eager / t_ref:.2f}x)")
        ours.compile()
        t_jit, oj = timed(lambda: ours(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx)).asnumpy(),
                          a.repeat if warm else 1)   # always warmed: the first call compiles
        ours._jit_blocks = None
        err = max(np.abs(o - r).max(), np.abs(oj - r).max()) / np.abs(r).max()
        line += f" | ours jit {t_jit:6.2f} s ({t_jit / t_ref:.2f}x)"
        print(line + f" | max rel diff {err:.1e}", flush=True)
    print(f"  peak RSS of the process (both models resident): {rss_gb():.1f} GB")
    del ref
    gc.collect()


if __name__ == "__main__":
    main()
