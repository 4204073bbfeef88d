"""Wan2.1 VAE decode: ours (MindSpore) against diffusers (PyTorch), same weights, same latent.

Real Wan2.1 VAE config (base_dim 96, z 16) with torch's default random init
(seed 0), saved once and loaded by both sides. One decode of a [1,16,3,32,32]
latent (→ 9 frames of 256×256) each, timed after loading.

    .venv/bin/python benchmarks/vae_decode.py [--frames 3] [--size 32] [--skip-torch] [--launch-blocking]

Measured on the 2-core AVX2 dev VM (MindSpore 2.10 CPU, torch 2.13, nothing else running):
torch 57.6 s, ours 49.5 s (0.86x), max |diff| 1.0e-5, peak RSS 3.30 GB (torch's 2.68 GB
included; ours alone adds ~0.6 GB). Before the oneDNN blocked-conv path (onednn.py) it
was 1.65x (MindSpore's gemm conv at ~60 GFLOP/s), and 4.2x before the native-conv2d path.
Timings on this shared VM vary by ±10–30%; `benchmarks/vae_profile.py` splits a decode
into conv shapes and the other layers.
"""
from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def rss_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--launch-blocking", action="store_true",
                    help="ms.runtime.launch_blocking(): synchronous eager kernels")
    args = ap.parse_args()

    import mindspore as ms
    ms.set_device("CPU")
    if args.launch_blocking:
        ms.runtime.launch_blocking()
    import torch
    from diffusers import AutoencoderKLWan as TorchVAE
    from nodes.wan import load_vae

    torch.manual_seed(0)
    ref = TorchVAE().eval()  # the Wan2.1 VAE config
    folder = Path(tempfile.mkdtemp(prefix="wan21-vae-"))
    atexit.register(shutil.rmtree, folder, True)
    ref.save_pretrained(folder)
    z = np.random.default_rng(0).standard_normal((1, 16, args.frames, args.size, args.size)).astype(np.float32)
    print(f"latent {z.shape} -> {1 + 4 * (args.frames - 1)} frames {args.size * 8}x{args.size * 8}; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    expect = None
    t_torch = float("nan")
    if not args.skip_torch:
        t0 = time.perf_counter()
        with torch.no_grad():
            expect = ref.decode(torch.from_numpy(z)).sample.numpy()
        t_torch = time.perf_counter() - t0
        print(f"torch/diffusers decode: {t_torch:.2f} s  (peak RSS so far {rss_peak_gb():.2f} GB)", flush=True)
    del ref

    vae = load_vae(folder, subfolder=None)
    rss_before = rss_peak_gb()
    t0 = time.perf_counter()
    out = vae.decode(ms.Tensor(z)).asnumpy()
    t_ours = time.perf_counter() - t0
    print(f"ours (MindSpore) decode: {t_ours:.2f} s  (peak RSS {rss_peak_gb():.2f} GB, was {rss_before:.2f} GB "
          f"before our decode)", flush=True)
    if expect is not None:
        diff = np.abs(out.astype(np.float64) - expect).max()
        print(f"ratio ours/torch: {t_ours / t_torch:.2f}x   max |diff| {diff:.3e}   "
              f"rel {diff / np.abs(expect).max():.3e}", flush=True)


if __name__ == "__main__":
    main()
