"""Step caching's speed and what it costs: the real Wan2.1 T2V 1.3B transformer config (30 blocks,
fp32, random weights, ms.jit blocks) sampling a fixed latent, uncached against MagCache and First
Block Cache (`nodes/wan/pipelines/step_cache.py`).

MagCache's ratios come from a calibration run (`step_cache_calibration.calibrate`) on *another*
noise seed, as a user calibrates once and reuses: the published ratios describe trained weights,
not these random ones. `--calibrate-frames 5` calibrates on a 5-frame clip at the same width,
height and schedule: MagCache ships one table per model for every size, and at 160x96 the ratios
from 5 and 17 frames differ by at most 0.005 and skip the same steps. Then the uncached and cached
samplings run in alternating pairs (the order alternating too, against this shared machine's slow
and fast stretches): the speed-up printed is
the median of the per-pair ratios of wall time, and of this process's CPU time, which other jobs on
the machine inflate less. Quality: PSNR of each cached final latent against the uncached
one, 10·log10(range² / MSE) with range = max - min of the uncached latent.

    python benchmarks/step_cache.py                                     # 480p x 17 frames, 20 steps (hours on 2 cores)
    python benchmarks/step_cache.py --pairs 1 --first-block 0 --calibrate-frames 5   # the same, about 2 hours
    python benchmarks/step_cache.py --height 96 --width 160 --frames 17 # reduced
    options: --steps N --guidance G --pairs N --magcache E --first-block T --max-skips K --retention R --layers N
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_v", "3")

WAN21_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def random_denoiser(layers: int):
    import mindspore as ms
    from nodes.wan.checkpoints.presets import _init_value   # the tiny preset's fan-in-scaled random init
    from nodes.wan.models.denoiser import WanDenoiser
    from nodes.wan.models.transformer import WanTransformer3DModel
    cfg = dict(WAN21_13B, num_layers=layers)
    model = WanTransformer3DModel.from_config(cfg)
    rng = np.random.default_rng(0)
    for name, p in sorted(model.parameters_and_names(), key=lambda kv: kv[0]):
        p.set_data(ms.Tensor(_init_value(name, tuple(p.shape), rng)))
    return WanDenoiser(model.compile(), name="random Wan2.1 T2V 1.3B")


def psnr(ref: np.ndarray, x: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - x) ** 2))
    rng = float(ref.max() - ref.min())
    return float("inf") if mse == 0 else 10 * np.log10(rng * rng / mse)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0, help="1 = one transformer call per step (no CFG)")
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--magcache", type=float, default=0.12, help="MagCache threshold (0: not run)")
    # These random weights change the first block's residual by 40-58 % from step to step (trained Wan
    # models much less), so First Block Cache skips nothing here below a threshold of about 0.45.
    ap.add_argument("--first-block", type=float, default=0.5, help="First Block Cache threshold (0: not run)")
    ap.add_argument("--max-skips", type=int, default=2)
    ap.add_argument("--retention", type=float, default=0.2)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--calibrate-frames", type=int, default=0,
                    help="calibrate on this many frames (same width, height and steps; 0: --frames). MagCache "
                         "ships one ratio table per model for every video size, so a shorter calibration clip "
                         "is how its tables are meant to be used, and it saves most of an hour at 480p")
    a = ap.parse_args()

    import mindspore as ms
    ms.set_device("CPU")
    from nodes.wan.pipelines.conditioning import WanConditioning
    from nodes.wan.pipelines.sampling import denoise
    from nodes.wan.pipelines.step_cache import StepCache, StepCacheSession
    from nodes.wan.pipelines.step_cache_calibration import calibrate

    denoiser = random_denoiser(a.layers)
    shape = (1, 16, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8)
    tokens = denoiser.tokens(shape)
    rng = np.random.default_rng(0)
    cond = WanConditioning(ms.Tensor(rng.standard_normal((1, 512, 4096)).astype(np.float32)))
    uncond = WanConditioning(ms.Tensor(rng.standard_normal((1, 512, 4096)).astype(np.float32)))
    noise = rng.standard_normal(shape).astype(np.float32)          # the fixed latent: seed 0
    calib_frames = a.calibrate_frames or a.frames
    calib_shape = (1, 16, (calib_frames - 1) // 4 + 1, *shape[3:])
    calib_noise = np.random.default_rng(1).standard_normal(calib_shape).astype(np.float32)
    args = dict(steps=a.steps, guidance=a.guidance, shift=a.shift, scheduler="unipc")
    negative = uncond if a.guidance > 1 else None
    print(f"Wan2.1 T2V 1.3B config ({a.layers} blocks, random weights, fp32, ms.jit), {a.width}x{a.height} x "
          f"{a.frames} frames = latent {list(shape)}, {tokens} tokens, {a.steps} UniPC steps, guidance {a.guidance:g}",
          flush=True)

    t0 = time.perf_counter()
    denoiser.transformer(ms.Tensor(noise), ms.Tensor(np.array([999], np.int64)), cond.embeds)   # compiles
    print(f"  warm-up forward (compiles): {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    ratios = calibrate(denoiser, cond, negative, noise=calib_noise, **args)
    table = ratios["ratios"]
    print(f"  calibration (uncached run, noise seed 1, {calib_frames} frames): {time.perf_counter() - t0:.1f} s; "
          f"ratios {np.nanmin(table[1:]):.4f}..{np.nanmax(table[1:]):.4f}", flush=True)
    print("    ratios: " + " ".join(f"{r:.4f}" for r in np.asarray(table)[:, 0]), flush=True)

    policies = {}
    if a.magcache > 0:
        policies["magcache"] = StepCache("magcache", a.magcache, a.max_skips, a.retention, ratios=ratios)
    if a.first_block > 0:
        policies["first_block"] = StepCache("first_block", a.first_block, a.max_skips, a.retention)

    def sample(config):
        session = None if config is None else StepCacheSession(config)
        t, c = time.perf_counter(), time.process_time()
        x, _ = denoise(denoiser, cond, negative, noise=noise, step_cache=session, **args)
        return time.perf_counter() - t, time.process_time() - c, x.asnumpy(), session

    times = {name: [] for name in ["plain", *policies]}
    cpu = {name: [] for name in times}
    results = {}
    for k in range(a.pairs):
        order = ["plain", *policies] if k % 2 == 0 else [*policies, "plain"]
        for name in order:
            dt, dc, x, session = sample(policies.get(name))
            times[name].append(dt)
            cpu[name].append(dc)
            results[name] = (x, session)
            print(f"    pair {k + 1}: {name:12s} {dt:7.1f} s (CPU {dc:7.1f} s)", flush=True)
    ref = results["plain"][0]
    print(f"  uncached: median {np.median(times['plain']):.1f} s over {a.pairs} runs "
          f"({np.median(times['plain']) / a.steps:.2f} s per step)")
    for name, config in policies.items():
        x, session = results[name]
        s = session.stats()
        ratio = np.array(times["plain"]) / np.array(times[name])
        cpu_ratio = np.array(cpu["plain"]) / np.array(cpu[name])
        print(f"  {name} (threshold {config.threshold:g}, max {config.max_skips} skips in a row, retention "
              f"{config.retention:g}): skipped {s['skipped']} of {s['evaluations']} transformer evaluations "
              f"(steps {s['skipped_steps']}), blocks run {s['blocks_run']}/{s['blocks_total']}\n"
              f"    speed-up: median of pairs {np.median(ratio):.2f}x (pairs: {' '.join(f'{r:.2f}' for r in ratio)}); "
              f"median {np.median(times[name]):.1f} s; CPU time: median of pairs {np.median(cpu_ratio):.2f}x "
              f"({' '.join(f'{r:.2f}' for r in cpu_ratio)})\n"
              f"    PSNR of the final latent vs uncached {psnr(ref, x):.1f} dB, "
              f"max abs diff {np.abs(ref - x).max():.3g} (latent range {ref.max() - ref.min():.3g})", flush=True)


if __name__ == "__main__":
    main()
