"""Where a Wan2.1 VAE decode spends its time on MindSpore CPU: per conv shape vs everything else.

Random-init real Wan2.1 VAE config (our own init, no torch needed), one decode of a
[1,16,F,S,S] latent. Every conv3d call (causal convs, time convs) is timed with a sync
on either side and grouped by shape; "other" is the rest, including the upsampling
3×3 convs (conv.upsample_conv2d, counted in "resample"). Inclusive times of the main
layer types follow. Each sync adds a little; --no-conv-timing gives the plain total.

    .venv/bin/python benchmarks/vae_profile.py [--frames 3] [--size 32] [--repeat 2] [--blocking]

Last full-size run (quiet 2-core VM, oneDNN blocked convs): total 48.8 s (with the
syncs), conv3d 38.3 s (123 GFLOP/s; the causal 96-ch convs at 256² take 14 s), RMS
norms 4.0 s, silu 1.1 s, resample incl. upsample convs 2.9 s. With MindSpore's gemm
conv (GRAPHRT_CPU_CONV=native) it was 98 s, conv3d 78.6 s at 60 GFLOP/s.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--blocking", action="store_true", help="ms.runtime.launch_blocking()")
    ap.add_argument("--dispatch", type=int, default=0, help="ms.runtime.dispatch_threads_num(n)")
    ap.add_argument("--no-conv-timing", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    import mindspore as ms
    ms.set_device("CPU")
    if args.blocking:
        ms.runtime.launch_blocking()
    if args.dispatch:
        ms.runtime.dispatch_threads_num(args.dispatch)
    from nodes.wan.models import vae as vae_mod
    vae = vae_mod.AutoencoderKLWan()
    rng = np.random.default_rng(0)
    for p in vae.get_parameters():
        fan = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) / np.sqrt(fan)))

    stats = collections.defaultdict(lambda: [0, 0.0, 0.0])
    conv = vae_mod.conv3d

    def timed(x, w, b=None, stride=1, padding=0, prefix=None):
        ms.runtime.synchronize()
        t0 = time.perf_counter()
        y = conv(x, w, b, stride, padding, prefix=prefix)
        ms.runtime.synchronize()
        dt = time.perf_counter() - t0
        shape = tuple(x.shape[1:])
        if prefix is not None:
            shape = (shape[0], shape[1] + prefix.shape[2]) + shape[2:]
        key = (shape, tuple(w.shape[:1]) + tuple(w.shape[2:]))
        s = stats[key]
        s[0] += 1
        s[1] += dt
        o = y.shape
        s[2] += 2.0 * w.shape[0] * int(np.prod(w.shape[1:])) * int(np.prod(o[2:])) * o[0]
        return y

    if not args.no_conv_timing:
        vae_mod.conv3d = timed
    # Inclusive wall time of the non-conv layers (the causal-conv wrapper includes its conv).
    op_stats = collections.defaultdict(float)

    def wrap(owner, name, label):
        fn = getattr(owner, name)

        def inner(*a, **k):
            ms.runtime.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            ms.runtime.synchronize()
            op_stats[label] += time.perf_counter() - t0
            return out
        setattr(owner, name, inner)

    wrap(vae_mod.RMSNorm, "construct", "rms_norm")
    wrap(vae_mod, "_silu", "silu")
    wrap(vae_mod.AttentionBlock, "construct", "attention block (incl. 1x1 convs)")
    wrap(vae_mod.CausalConv3d, "construct", "causal conv (incl. conv)")
    wrap(vae_mod.Resample, "construct", "resample (incl. convs)")
    z = ms.Tensor(rng.standard_normal((1, 16, args.frames, args.size, args.size)).astype(np.float32))
    for r in range(args.repeat):
        stats.clear()
        op_stats.clear()
        t0 = time.perf_counter()
        vae.decode(z).asnumpy()
        total = time.perf_counter() - t0
        conv_t = sum(s[1] for s in stats.values())
        flops = sum(s[2] for s in stats.values())
        print(f"run {r}: total {total:.2f} s, conv {conv_t:.2f} s ({flops / 1e9:.0f} GFLOP, "
              f"{flops / 1e9 / max(conv_t, 1e-9):.1f} GFLOP/s), other {total - conv_t:.2f} s", flush=True)
    for label, t in op_stats.items():
        print(f"  {label:40s} {t:7.2f} s")
    for key, (n, t, f) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        print(f"  {str(key):55s} n={n:3d} {t:7.2f} s  {f / 1e9 / max(t, 1e-9):6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
