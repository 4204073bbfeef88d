"""A 14B Wan transformer in bounded memory: one streamed forward (`offload="blocks"`).

Writes a random-weight Wan2.1 T2V 14B transformer (the real config: 40 blocks of hidden size 5120)
to a temporary bf16 safetensors file (28 GB; written tensor by tensor, chunk by chunk, never held
whole; deleted at exit), runs one forward at 192 tokens with its blocks streamed from the file
(the next block read and widened to float32 on a background thread while the current one
computes), and prints its peak RSS and time. The reference is the 1.3B transformer (same
layout, random bf16 weights) loaded resident, its forward time scaled by the parameter count;
the 1.3B is also run streamed, for a same-model ratio. The three runs go in rounds, each round
in a rotated order, and the ratios are taken within a round (this shared machine's speed varies
up to 1.7x from minute to minute); medians are printed.
Goals: peak RSS <= 10 GB on a 24 GB machine, streamed time <= 1.3x the scaled resident time.

Each measurement runs in its own process, so peak RSS (VmHWM) is that run's alone.

    python benchmarks/memory_14b.py [--layers 40] [--pairs 3] [--skip-14b] [--workflow | --workflow-only]
                                    [--size 832x480x81] [--te-dtype float32] [--te-offload auto]
                                    [--offloads none,blocks] [--memory-budget 16GB] [--text-encoder-only]

`--workflow` also runs the whole 1.3B T2V workflow (random weights: UMT5-XXL text encoder, 1.3B
transformer, Wan2.1 VAE; `--size 832x480x81`, 1 step) with offload "none" and "blocks" and prints
each run's peak RSS, the resident set after the text encodes, after denoising and after decoding,
and the highest resident set sampled while each node ran, so the node that set the peak is named.
Models are kept while they fit the memory budget (`--memory-budget`, default: available RAM minus
a margin) and released when another model or a forward's working memory needs the room: the peak
is bounded by the budget, and a tighter budget releases the text encoder sooner.

`--text-encoder-only` measures UMT5-XXL (the real config, random bf16 file, 10.6 GB; `--te-layers`
for fewer blocks) encoding one 512-token prompt in the `--te-runs` given (dtype:offload; by default
float16 resident, 13.4 GB, against float16 and float32 streamed: `offload="blocks"`, its blocks read
from the file as they run and only the prompt's rows of the token embedding), in rounds; peak RSS,
encode seconds and each run's ratio to the first. Float32 resident (22.8 GB) does not fit 24 GB:
`--te-layers 8 --te-runs float32:none,float32:blocks` compares it.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_v", "3")

WAN21_14B = dict(patch_size=[1, 2, 2], num_attention_heads=40, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                 rope_max_seq_len=1024, pos_embed_seq_len=None)
WAN21_1_3B = dict(WAN21_14B, num_attention_heads=12, ffn_dim=8960, num_layers=30)
LATENT_192 = (1, 16, 3, 16, 16)      # 3 x 8 x 8 = 192 tokens
CHUNK = 1 << 26                      # values generated and written at a time (128 MB of bf16)


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def random_bf16_bits(rng, n: int, fan_in: int) -> np.ndarray:
    """bf16 bit patterns of random normal-range values of about 1/sqrt(fan_in): a random sign, an
    exponent in a 2-octave band and a random mantissa (no denormals, infinities or NaNs)."""
    e = int(np.floor(np.log2(1.0 / np.sqrt(max(fan_in, 1))))) + 127 - 1
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    sign, mant = bits & 0x8000, bits & 0x007F
    exp = (e + ((bits >> 7) & 1)).astype(np.uint16) << 7
    return sign | exp | mant


def write_bf16_transformer(folder: Path, config: dict, seed: int = 0) -> int:
    """A diffusers transformer folder whose weights are random bf16; returns the file's size."""
    from nodes.wan.models.transformer import WanTransformer3DModel
    return write_bf16_cell(folder, WanTransformer3DModel, config, "diffusion_pytorch_model", seed)


def n_params(config: dict) -> int:
    import mindspore as ms
    from nodes.wan.models.transformer import WanTransformer3DModel
    model = WanTransformer3DModel.from_config(config, dtype=ms.float32)
    return sum(int(np.prod(p.shape)) for p in model.get_parameters())


# -- one measurement, in a child process -------------------------------------------------------------------------
def child_forward(folder: str, offload: str, repeat: int) -> dict:
    import mindspore as ms
    ms.set_device("CPU")
    from nodes.wan import load_transformer
    from nodes.wan.backend import memory
    from nodes.wan.models import block_stream
    t0 = time.perf_counter()
    model = load_transformer(folder, None, offload=offload).compile()
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal(LATENT_192, dtype=np.float32))
    t = ms.Tensor(np.array([500], np.int64))
    ctx = ms.Tensor(rng.standard_normal((1, 512, 4096), dtype=np.float32))
    times, waits = [], []
    stream = model.block_stream
    for _ in range(repeat):
        w0 = stream.stats["wait_s"] if stream is not None else 0.0
        t0 = time.perf_counter()
        out = model(x, t, ctx).asnumpy()
        times.append(time.perf_counter() - t0)
        waits.append(stream.stats["wait_s"] - w0 if stream is not None else 0.0)
    return {"offload": model.offload, "load_s": load_s, "times": times, "waits": waits, "peak_rss": _peak_rss(),
            "rss_after": memory.rss(), "resident_weights": model.resident_nbytes(),
            "widened_peak": block_stream.peak()["blocks"], "finite": bool(np.isfinite(out).all()),
            "checksum": float(np.abs(out).sum())}


def _peak_rss() -> int:
    from nodes.wan.backend import memory
    return memory.peak_rss()     # VmHWM: ru_maxrss would carry over this parent's size across fork + exec


def run_child(args: list[str]) -> dict:
    """Run a measurement in a child process; its progress lines and errors go to this process's stderr."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed (exit {out.returncode}): its error is printed above")
    return json.loads(out.stdout.strip().splitlines()[-1])


TMP_PREFIX = "graphrt-memory-14b-"


def remove_stale_runs(parent: Path):
    """Delete the files of earlier runs that were killed outright (SIGKILL runs no cleanup): 14-40 GB each."""
    for d in parent.glob(TMP_PREFIX + "*"):
        try:
            os.kill(int((d / "owner.pid").read_text()), 0)
            continue                                    # its run is still going
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue                                    # not ours to judge: no readable owner, or not permitted
        shutil.rmtree(d, ignore_errors=True)
        print(f"removed {d}, left by a run that was killed", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=40, help="14B blocks to write (40: the real model)")
    ap.add_argument("--pairs", type=int, default=3, help="rounds of 1.3B resident, 1.3B streamed and 14B streamed")
    ap.add_argument("--skip-14b", action="store_true")
    ap.add_argument("--workflow", action="store_true", help="also the whole 1.3B T2V workflow's peak RSS")
    ap.add_argument("--workflow-only", action="store_true", help="only the workflow (no forward measurements)")
    ap.add_argument("--size", default="832x480x81", help="the workflow's width x height x frames")
    ap.add_argument("--te-dtype", default="float32", help="the workflow's text encoder dtype (UMT5-XXL in float32 is "
                                                          "22.8 GB resident; streamed, about 2 GB)")
    ap.add_argument("--te-offload", default="auto", help="the workflow's text encoder offload (auto: streamed when it "
                                                         "does not fit the budget's room)")
    ap.add_argument("--text-encoder-only", action="store_true",
                    help="only UMT5-XXL's encode, resident vs streamed (`--pairs` rounds)")
    ap.add_argument("--te-runs", default="float16:none,float16:blocks,float32:blocks",
                    help="--text-encoder-only: dtype:offload runs; ratios are to the first")
    ap.add_argument("--te-layers", type=int, default=24, help="--text-encoder-only: UMT5-XXL blocks to write (24: "
                                                              "the real model; fewer let float32 run resident)")
    ap.add_argument("--offloads", default="none,blocks", help="the workflow's transformer offload modes to run")
    ap.add_argument("--dir", default=None, help="where the temporary files go (default: the system's temp dir)")
    ap.add_argument("--memory-budget", default=None, help="the runs' memory budget, e.g. 16GB (default: available RAM "
                                                          "minus a margin, as `python -m graphrt run`)")
    a = ap.parse_args()
    if a.memory_budget:
        from nodes.wan.backend import memory
        memory.set_memory_budget(a.memory_budget)      # through the environment, so the child runs have it
    if a.child is not None:
        kind, *rest = a.child
        if kind == "forward":
            print(json.dumps(child_forward(rest[0], rest[1], int(rest[2]))))
        elif kind == "text":
            print(json.dumps(child_text(*rest)))
        elif kind == "workflow":
            print(json.dumps(child_workflow(*rest)))
        return

    remove_stale_runs(Path(a.dir or tempfile.gettempdir()))
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=a.dir))
    (tmp / "owner.pid").write_text(str(os.getpid()))
    atexit.register(shutil.rmtree, tmp, True)
    for sig in (signal.SIGTERM, signal.SIGHUP):     # so that the files go on `kill` and a closed terminal too
        signal.signal(sig, lambda *_: sys.exit(143))
    try:
        print(f"temporary files in {tmp} ({shutil.disk_usage(tmp).free / 2**30:.0f} GB free)", flush=True)
        if a.workflow_only:
            run_workflows(tmp, a.size, a.te_dtype, a.offloads.split(","), a.te_offload)
            return
        if a.text_encoder_only:
            run_text_encoder(tmp, a.pairs, [tuple(r.split(":")) for r in a.te_runs.split(",")], a.te_layers)
            return
        cfg13, cfg14 = WAN21_1_3B, dict(WAN21_14B, num_layers=a.layers)
        p13, p14 = n_params(cfg13), n_params(cfg14)
        t0 = time.perf_counter()
        size13 = write_bf16_transformer(tmp / "t13", cfg13)
        print(f"1.3B: {p13 / 1e9:.3f}B parameters, bf16 file {gb(size13)} written in {time.perf_counter() - t0:.0f} s",
              flush=True)
        runs = [("1.3B", "none"), ("1.3B", "blocks")]
        if not a.skip_14b:
            need, free = 2 * p14 + (1 << 30), shutil.disk_usage(tmp).free
            if free < need:
                raise SystemExit(f"the 14B file needs {gb(need)}; {gb(free)} free in {tmp}: use --layers or --dir")
            t0 = time.perf_counter()
            size14 = write_bf16_transformer(tmp / "t14", cfg14)
            print(f"14B ({a.layers} blocks): {p14 / 1e9:.2f}B parameters, bf16 file {gb(size14)} written in "
                  f"{time.perf_counter() - t0:.0f} s (float32 resident would be {gb(4 * p14)})", flush=True)
            runs.append(("14B", "blocks"))
        # Rounds of every run, in a rotating order: the machine's slow and fast minutes hit all of them.
        results = {r: [] for r in runs}
        for i in range(a.pairs):
            for model, mode in runs[i % len(runs):] + runs[:i % len(runs)]:
                r = run_child(["forward", str(tmp / ("t13" if model == "1.3B" else "t14")), mode, "2"])
                results[(model, mode)].append(r)
                print(f"  round {i + 1}: {model} offload={mode}: forward {min(r['times']):.2f} s (first "
                      f"{r['times'][0]:.2f} s, with the compile), load {r['load_s']:.1f} s, peak RSS "
                      f"{gb(r['peak_rss'])}, widened blocks at once {r['widened_peak']}"
                      + (f", waited for reads {r['waits'][int(np.argmin(r['times']))]:.2f} s" if mode == "blocks" else ""),
                      flush=True)
        best = {k: [min(r["times"]) for r in v] for k, v in results.items()}
        res, stream = best[("1.3B", "none")], best[("1.3B", "blocks")]
        ratios = [s_ / r_ for r_, s_ in zip(res, stream)]
        print(f"1.3B at 192 tokens: resident {np.median(res):.2f} s, streamed {np.median(stream):.2f} s (medians of "
              f"{a.pairs}); streamed/resident per round {', '.join(f'{x:.2f}' for x in ratios)}, median "
              f"{np.median(ratios):.2f}; peak RSS resident {gb(results[('1.3B', 'none')][0]['peak_rss'])}, streamed "
              f"{gb(results[('1.3B', 'blocks')][0]['peak_rss'])}", flush=True)
        if not a.skip_14b:
            r14 = results[("14B", "blocks")]
            t14, scale = best[("14B", "blocks")], p14 / p13
            ratios = [t / (r_ * scale) for t, r_ in zip(t14, res)]
            print(f"14B streamed forward at 192 tokens: {np.median(t14):.1f} s (median of {a.pairs}: "
                  f"{', '.join(f'{t:.1f}' for t in t14)}), peak RSS {gb(max(r['peak_rss'] for r in r14))} "
                  f"(goal <= 10 GB), resident weights after a forward {gb(r14[0]['resident_weights'])}, widened "
                  f"blocks at once {max(r['widened_peak'] for r in r14)}, outputs finite {all(r['finite'] for r in r14)}",
                  flush=True)
            print(f"  / (the same round's 1.3B resident forward x {scale:.2f} parameters): "
                  f"{', '.join(f'{x:.2f}' for x in ratios)}, median {np.median(ratios):.2f}x (goal <= 1.3x); "
                  f"medians: {np.median(t14):.1f} s vs {np.median(res) * scale:.1f} s", flush=True)
        shutil.rmtree(tmp / "t13", ignore_errors=True)
        shutil.rmtree(tmp / "t14", ignore_errors=True)

        if a.workflow:
            run_workflows(tmp, a.size, a.te_dtype, a.offloads.split(","), a.te_offload)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the whole 1.3B T2V workflow -----------------------------------------------------------------------------------
UMT5_XXL = {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": 4096, "d_kv": 64, "d_ff": 10240,
            "num_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "vocab_size": 256384,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
WAN21_VAE = {"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
             "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
             "is_residual": False, "in_channels": 3, "out_channels": 3, "patch_size": None,
             "scale_factor_temporal": 4, "scale_factor_spatial": 8}


def write_bf16_cell(folder: Path, cls, config: dict, name: str, seed: int) -> int:
    """`folder/name.safetensors` (+ config.json) with random bf16 weights of the shapes `cls` has for
    `config`, written chunk by chunk (nothing of the model's size is held); returns the file's size."""
    import mindspore as ms
    model = cls.from_config(config, dtype=ms.float32)   # shapes only: nothing is allocated
    shapes = {n: tuple(p.shape) for n, p in model.parameters_and_names()}
    del model
    header, offset = {}, 0
    for n in sorted(shapes):
        size = int(np.prod(shapes[n]))
        header[n] = {"dtype": "BF16", "shape": list(shapes[n]), "data_offsets": [offset, offset + 2 * size]}
        offset += 2 * size
    header["__metadata__"] = {"format": "pt"}
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    path = folder / f"{name}.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for n in sorted(shapes):
            shape = shapes[n]
            size, fan_in = int(np.prod(shape)), int(np.prod(shape[1:])) if len(shape) > 1 else 1
            for start in range(0, size, CHUNK):
                random_bf16_bits(rng, min(CHUNK, size - start), fan_in).tofile(f)
    return path.stat().st_size


def run_workflows(tmp: Path, size: str, te_dtype: str, offloads: list[str], te_offload: str = "auto"):
    from nodes.wan.checkpoints.presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, _write_tokenizer
    from nodes.wan.models.umt5 import UMT5EncoderModel
    from nodes.wan.models.vae import AutoencoderKLWan
    pipe = tmp / "pipe"
    vocab = _write_tokenizer(pipe / "tokenizer")
    t0 = time.perf_counter()
    write_bf16_transformer(pipe / "transformer", WAN21_1_3B, seed=1)
    te = write_bf16_cell(pipe / "text_encoder", UMT5EncoderModel, dict(UMT5_XXL, vocab_size=max(vocab, 256384)),
                         "model", 2)
    write_bf16_cell(pipe / "vae", AutoencoderKLWan, dict(WAN21_VAE, latents_mean=WAN21_LATENTS_MEAN,
                                                         latents_std=WAN21_LATENTS_STD),
                    "diffusion_pytorch_model", 3)
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
         "use_flow_sigmas": True, "flow_shift": 3.0, "solver_order": 2, "solver_type": "bh2", "predict_x0": True,
         "lower_order_final": True, "final_sigmas_type": "zero", "timestep_spacing": "linspace"}))
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "boundary_ratio": None,
                                                       "expand_timesteps": False}))
    print(f"1.3B T2V pipeline (UMT5-XXL: bf16 file {gb(te)}; 1.3B; Wan2.1 VAE; random bf16) written in "
          f"{time.perf_counter() - t0:.0f} s; text encoder in {te_dtype}, offload={te_offload}", flush=True)
    for offload in offloads:
        r = run_child(["workflow", str(pipe), offload, size, te_dtype, te_offload])
        print(f"workflow {size}, 1 step, offload={offload}: peak RSS {gb(r['peak_rss'])}; resident set after the "
              f"text encodes {gb(r['rss_after_text'])}, after denoising {gb(r['rss_after_denoise'])}, after decoding "
              f"{gb(r['rss_after_decode'])}; released: {'; '.join(r['released']) or 'nothing'}; {r['seconds']:.0f} s; "
              f"node seconds: {', '.join(f'{k} {v:.0f}' for k, v in r['node_seconds'].items())}; memory budget "
              f"{gb(r['budget'])}; resident set's peak while each node ran (sampled every 0.1 s): "
              f"{', '.join(f'{k} {gb(v)}' for k, v in r['node_peak_rss'].items())}; text encoder offload "
              f"{r['te_offload']}", flush=True)


# -- UMT5-XXL alone: resident vs streamed ------------------------------------------------------------------------
def run_text_encoder(tmp: Path, rounds: int, runs: list[tuple[str, str]], layers: int = 24):
    from nodes.wan.checkpoints.presets import _write_tokenizer
    from nodes.wan.models.umt5 import UMT5EncoderModel
    vocab = _write_tokenizer(tmp / "te" / "tokenizer")
    t0 = time.perf_counter()
    size = write_bf16_cell(tmp / "te" / "text_encoder", UMT5EncoderModel,
                           dict(UMT5_XXL, vocab_size=max(vocab, 256384), num_layers=layers), "model", 2)
    print(f"UMT5-XXL ({layers} blocks): bf16 file {gb(size)} written in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {r: [] for r in runs}
    for i in range(rounds):
        for dtype, offload in runs[i % len(runs):] + runs[:i % len(runs)]:
            r = run_child(["text", str(tmp / "te"), dtype, offload])
            results[(dtype, offload)].append(r)
            print(f"  round {i + 1}: {dtype} offload={offload}: encodes {', '.join(f'{t:.1f}' for t in r['times'])} s "
                  f"(the first with the load), peak RSS {gb(r['peak_rss'])}, widened blocks at once "
                  f"{r['widened_peak']}", flush=True)
    best = {k: [min(r["times"][1:]) for r in v] for k, v in results.items()}
    base = best[runs[0]]
    for dtype, offload in runs:
        ratios = [b / a for a, b in zip(base, best[(dtype, offload)])]
        print(f"UMT5-XXL {dtype} offload={offload}: encode {np.median(best[(dtype, offload)]):.1f} s (median of "
              f"{rounds}; load + first encode {np.median([r['times'][0] for r in results[(dtype, offload)]]):.1f} s), "
              f"peak RSS {gb(max(r['peak_rss'] for r in results[(dtype, offload)]))}; / {runs[0][0]} "
              f"offload={runs[0][1]} per round: {', '.join(f'{x:.2f}' for x in ratios)}, median {np.median(ratios):.2f}x",
              flush=True)
    a = np.asarray(results[runs[0]][0]["out"])
    for k in runs[1:]:
        b = np.asarray(results[k][0]["out"])
        print(f"  {k[0]} {k[1]} vs {runs[0][0]} {runs[0][1]}: max |diff| {np.max(np.abs(a - b)):.3g} "
              f"(of max |value| {np.max(np.abs(a)):.3g})", flush=True)


def child_text(folder: str, dtype: str, offload: str, repeat: str = "3") -> dict:
    import mindspore as ms
    ms.set_device("CPU")
    from nodes.wan.models import block_stream
    from nodes.wan.pipelines.components import text_encoder_on_demand
    rng = np.random.default_rng(0)
    ids = np.zeros((1, 512), np.int64)
    ids[0, :24] = rng.integers(3, 256000, 24)       # a prompt of 24 tokens padded to 512, as the pipelines encode
    mask = (ids != 0).astype(np.int64)
    encoder = text_encoder_on_demand(folder, dtype, offload=offload)
    times = []
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        out = encoder(ids, mask).astype(ms.float32).asnumpy()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss": _peak_rss(), "widened_peak": block_stream.peak()["blocks"],
            "offload": encoder.offload, "out": out[0, :24, :8].tolist()}


def child_workflow(pipe: str, offload: str, size: str, te_dtype: str = "float32", te_offload: str = "auto") -> dict:
    import mindspore as ms
    ms.set_device("CPU")
    from graphrt import Executor, GraphBuilder
    from graphrt.registry import load_node_packs
    from nodes.wan.backend import memory
    from nodes.wan.models import residency
    load_node_packs()
    w, h, f = (int(v) for v in size.lower().split("x"))
    rss = {}
    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source=pipe, offload=offload, text_encoder_dtype=te_dtype,
                  text_encoder_offload=te_offload)
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a red fox in the snow")
    neg = g.node("WanTextEncode", text_encoder=load[1], text="")
    lat = g.node("WanEmptyLatentVideo", width=w, height=h, num_frames=f)
    den = g.node("WanDenoise", model=load[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=0, steps=1,
                 guidance=5.0, scheduler="unipc", shift=3.0)
    dec = g.node("WanVAEDecode", vae=load[2], latent=den[0])
    save = g.node("SaveTensor", tensor=dec[0], filename_prefix="frames", format="npy")
    ex = Executor(cache="last-run", output_dir=str(Path(pipe).parent / "out"))
    names = {"WanTextEncode": "text", "WanDenoise": "denoise", "WanVAEDecode": "decode"}

    running, node_peak, done = ["start"], {}, threading.Event()

    def on_event(ev):
        if ev.type == "node_started":
            running[0] = f"{ev.class_type}#{ev.node_id}"
        if ev.type == "node_finished" and ev.class_type in names:
            rss[names[ev.class_type]] = memory.rss()
        if ev.type == "node_finished":     # as it goes, for runs of hours: the parent passes it on
            node = f"{ev.class_type}#{ev.node_id}"
            print(f"  {time.perf_counter() - t0:.0f} s: {node} done; resident set {gb(memory.rss())}, peak while it "
                  f"ran {gb(node_peak[node]) if node in node_peak else 'not sampled'}, peak so far {gb(_peak_rss())}", file=sys.stderr, flush=True)
    ex.subscribe(on_event)

    def sample():        # the resident set's highest value seen while each node ran (every 0.1 s)
        while not done.wait(0.1):
            node_peak[running[0]] = max(node_peak.get(running[0], 0), memory.rss())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    result = ex.run(g.to_workflow(), targets=[save.id, load.id])
    te_mode = result.outputs[load.id]["text_encoder"].encoder.offload
    done.set()
    sampler.join()
    return {"peak_rss": _peak_rss(), "rss_after_text": rss.get("text", 0), "rss_after_denoise": rss.get("denoise", 0),
            "rss_after_decode": rss.get("decode", 0), "seconds": time.perf_counter() - t0,
            "budget": memory.memory_budget(), "node_peak_rss": node_peak,
            "released": [f"{n} ({gb(b)})" for n, b in residency.released_log], "te_offload": te_mode,
            "node_seconds": {f"{r.class_type}#{nid}": r.seconds or 0.0 for nid, r in result.report.items()}}


if __name__ == "__main__":
    main()
