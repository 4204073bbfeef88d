"""Text-to-video on one tiny random pipeline: our workflow vs diffusers' WanPipeline.

Both sides load the same diffusers-format files and start from the same noise.
Each side runs in its own process so that peak RSS is its own; the script
prints time (load + generate, and generate alone), peak RSS and the ratios,
plus the largest difference between the two videos.

    python benchmarks/t2v_pipeline.py [--steps 10] [--size 64x64x17]
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_v", "3")


def side_ours(folder, w, h, f, steps, out):
    t0 = time.perf_counter()
    import numpy as np
    import mindspore as ms
    ms.set_device("CPU")
    from graphrt import Executor, GraphBuilder
    from graphrt.registry import load_node_packs
    load_node_packs()
    g = GraphBuilder()
    loader = g.node("WanPipelineLoader", source=str(folder))
    pos = g.node("WanTextEncode", text_encoder=loader[1], text="a red fox running in the snow")
    neg = g.node("WanTextEncode", text_encoder=loader[1], text="")
    lat = g.node("WanEmptyLatentVideo", width=w, height=h, num_frames=f)
    noise = g.node("WanLoadNoise", path=str(Path(out).parent / "noise.npy"))
    den = g.node("WanDenoise", model=loader[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=0,
                 steps=steps, guidance=5.0, scheduler="unipc", shift=3.0, noise=noise[0])
    dec = g.node("WanVAEDecode", vae=loader[2], latent=den[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix="bench", format="npy")
    out_dir = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, out_dir, True)
    ex = Executor(output_dir=out_dir)
    t1 = time.perf_counter()
    res = ex.run(g.to_workflow())
    t2 = time.perf_counter()
    gen = sum(r.seconds for r in res.report.values() if r.class_type in ("WanTextEncode", "WanDenoise", "WanVAEDecode"))
    path = [v["path"] for v in res.outputs.values()][0]
    np.save(out, np.load(path))
    return {"total": t2 - t0, "generate": gen}


def side_diffusers(folder, w, h, f, steps, out):
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from diffusers import WanPipeline
    pipe = WanPipeline.from_pretrained(folder)
    noise = torch.from_numpy(np.load(Path(out).parent / "noise.npy"))
    t1 = time.perf_counter()
    with torch.no_grad():
        frames = pipe("a red fox running in the snow", negative_prompt="", height=h, width=w, num_frames=f,
                      num_inference_steps=steps, guidance_scale=5.0, latents=noise, output_type="np").frames[0]
    t2 = time.perf_counter()
    np.save(out, frames)
    return {"total": t2 - t0, "generate": t2 - t1}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", default="64x64x17", help="WxHxF")
    ap.add_argument("--side", choices=["ours", "diffusers"])
    ap.add_argument("--folder")
    ap.add_argument("--out")
    a = ap.parse_args()
    w, h, f = map(int, a.size.split("x"))
    if a.side:
        # ru_maxrss survives fork+exec (it would report the parent's peak), so sample RSS instead.
        import threading
        import psutil
        proc, peak, done = psutil.Process(), [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                done.wait(0.02)
        threading.Thread(target=sample, daemon=True).start()
        stats = (side_ours if a.side == "ours" else side_diffusers)(a.folder, w, h, f, a.steps, a.out)
        done.set()
        stats["peak_rss_mb"] = max(peak[0], proc.memory_info().rss) / 2**20
        print(json.dumps(stats))
        return
    import numpy as np
    from tests.wan.reference import build_tiny_wan_pipeline
    from nodes.wan.pipelines.noise import make_noise
    tmp = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, tmp, True)
    build_tiny_wan_pipeline(tmp / "pipe")
    np.save(tmp / "noise.npy", make_noise(0, (1, 16, (f - 1) // 4 + 1, h // 8, w // 8)))
    results = {}
    for side in ("diffusers", "ours"):
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--folder", str(tmp / "pipe"),
                               "--out", str(tmp / f"frames_{side}.npy"), "--size", a.size, "--steps", str(a.steps)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, ref = np.load(tmp / "frames_ours.npy"), np.load(tmp / "frames_diffusers.npy")
    print(f"tiny Wan T2V, {w}x{h}x{f}, {a.steps} UniPC steps, CFG 5")
    for side in ("diffusers", "ours"):
        r = results[side]
        print(f"  {side:9s}: generate {r['generate']:7.2f} s   load+generate {r['total']:7.2f} s   "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB")
    d, o = results["diffusers"], results["ours"]
    print(f"  ratio ours/diffusers: generate {o['generate'] / d['generate']:.2f}x   "
          f"total {o['total'] / d['total']:.2f}x   peak RSS {o['peak_rss_mb'] / d['peak_rss_mb']:.2f}x")
    print(f"  max |ours - diffusers| over frames: {np.abs(ours - ref).max():.2e}")


if __name__ == "__main__":
    main()
