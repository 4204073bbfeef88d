"""Text-to-video end to end: our workflow on a tiny diffusers WanPipeline's files
against `WanPipeline(..., latents=noise, output_type="np")`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphrt import Executor, GraphBuilder, Workflow
from graphrt.registry import load_node_packs
from tests.wan.parity import rel_err
from tests.wan.reference import build_tiny_wan_pipeline, reference_frames

from nodes.wan.pipelines.noise import make_noise

H, W, F = 32, 48, 9          # latent [1, 16, 3, 4, 6]
LATENT_SHAPE = (1, 16, 3, 4, 6)
PROMPT, NEGATIVE = "a red fox running in the snow", "blurry, static"
TOL = 1e-4                   # fp32, relative to the frames' range


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    load_node_packs()
    folder = tmp_path_factory.mktemp("wan") / "pipe"
    pipe = build_tiny_wan_pipeline(folder)
    return folder, pipe


def t2v_graph(source, *, steps=3, guidance=5.0, scheduler="unipc", seed=0, negative=NEGATIVE, stages=None,
              noise_path=None, prefix="t2v", compile="auto", max_length=None):
    g = GraphBuilder()
    loader = g.node("WanPipelineLoader", source=str(source), compile=compile)
    text = {} if max_length is None else {"max_length": max_length}
    pos = g.node("WanTextEncode", text_encoder=loader[1], text=PROMPT, **text)
    neg = g.node("WanTextEncode", text_encoder=loader[1], text=negative, **text)
    latent = g.node("WanEmptyLatentVideo", width=W, height=H, num_frames=F, batch=1)
    common = dict(model=loader[0], positive=pos[0], negative=neg[0], seed=seed, steps=steps, guidance=guidance,
                  scheduler=scheduler, shift=3.0)
    if noise_path is not None:
        common["noise"] = g.node("WanLoadNoise", path=str(noise_path))[0]
    if stages is None:
        den = g.node("WanDenoise", latent=latent[0], **common)
    else:
        k = stages
        first = g.node("WanDenoise", latent=latent[0], end_step=k, return_with_leftover_noise=True, **common)
        den = g.node("WanDenoise", latent=first[0], start_step=k, add_noise=False, **common)
    dec = g.node("WanVAEDecode", vae=loader[2], latent=den[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix=prefix, format="npy")
    g.node("SaveImagesAsVideo", images=dec[0], filename_prefix=prefix, fps=16.0)
    return g, dec


def run_frames(ex, g, dec):
    res = ex.run(g.to_workflow(), targets=None)
    path = [v["path"] for v in res.outputs.values() if str(v.get("path", "")).endswith(".npy")][0]
    return np.load(path), res


@pytest.mark.parametrize("scheduler,guidance,steps,cfg_batch,compile", [
    ("unipc", 5.0, 3, True, "auto"), ("unipc", 5.0, 3, False, "on"), ("unipc", 1.0, 4, True, "auto"),
    ("euler", 5.0, 3, True, "auto")])
def test_frames_match_diffusers(tiny, tmp_path, monkeypatch, scheduler, guidance, steps, cfg_batch, compile):
    """`cfg_batch=False` forces CFG's two passes to run separately (as for large latents);
    `compile="on"` runs the blocks under ms.jit ("auto" leaves this toy model eager)."""
    import nodes.wan.pipelines.sampling
    if not cfg_batch:
        monkeypatch.setattr(nodes.wan.pipelines.sampling, "CFG_BATCH_MAX_TOKENS", 0)
    folder, pipe = tiny
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    pipe.scheduler = (UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler") if scheduler == "unipc"
                      else FlowMatchEulerDiscreteScheduler(shift=3.0))
    noise = make_noise(7, LATENT_SHAPE)
    ref = reference_frames(pipe, PROMPT, NEGATIVE, noise, H, W, F, steps, guidance)[0]
    ex = Executor(output_dir=tmp_path)
    g, dec = t2v_graph(folder, steps=steps, guidance=guidance, scheduler=scheduler, seed=7, compile=compile)
    ours, _ = run_frames(ex, g, dec)
    denoiser = ex.run(g.to_workflow(), targets=["1"]).outputs["1"]["model"]   # cached: the model that ran
    assert (denoiser.transformer._jit_blocks is not None) == (compile == "on")
    assert ours.shape == ref.shape == (F, H, W, 3)
    err = rel_err(ours, ref)
    assert err < TOL, f"frames differ from diffusers by {err:.2e}"


def test_explicit_noise_file_equals_seed(tiny, tmp_path):
    folder, _ = tiny
    noise_path = tmp_path / "noise.npy"
    np.save(noise_path, make_noise(11, LATENT_SHAPE))
    ex = Executor(output_dir=tmp_path)
    a, _ = run_frames(ex, *t2v_graph(folder, seed=11, prefix="a"))
    b, _ = run_frames(ex, *t2v_graph(folder, seed=999, noise_path=noise_path, prefix="b"))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_chained_stages_equal_single_run(tiny, tmp_path, k):
    folder, _ = tiny
    ex = Executor(output_dir=tmp_path)
    single, _ = run_frames(ex, *t2v_graph(folder, steps=4, prefix="single"))
    chained, _ = run_frames(ex, *t2v_graph(folder, steps=4, stages=k, prefix="chained"))
    np.testing.assert_array_equal(chained, single)


def test_mp4_reads_back(tiny, tmp_path):
    from nodes.wan.media import probe_video
    folder, _ = tiny
    res = Executor(output_dir=tmp_path).run(t2v_graph(folder, prefix="vid")[0].to_workflow())
    mp4 = [v["path"] for v in res.outputs.values() if str(v.get("path", "")).endswith(".mp4")][0]
    info = probe_video(mp4)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (F, W, H, 16.0)


def test_cached_rerun_reexecutes_only_what_changed(tiny, tmp_path):
    folder, _ = tiny
    ex = Executor(output_dir=tmp_path)
    g, _ = t2v_graph(folder, seed=1)
    wf = g.to_workflow()
    ex.run(wf)
    d = wf.to_dict()
    den = next(i for i, n in d.items() if isinstance(n, dict) and n.get("class_type") == "WanDenoise")
    d[den]["inputs"]["seed"] = 2
    report = ex.run(Workflow.from_dict(d)).report
    executed = {report[i].class_type if hasattr(report[i], "class_type") else d[i]["class_type"]
                for i in d if isinstance(d[i], dict) and "class_type" in d[i] and report[i].status == "executed"}
    assert executed == {"WanDenoise", "WanVAEDecode", "SaveTensor", "SaveImagesAsVideo"}
    pos = next(i for i, n in d.items() if isinstance(n, dict) and n.get("inputs", {}).get("text") == PROMPT)
    d[pos]["inputs"]["text"] = "a blue bird"
    report = ex.run(Workflow.from_dict(d)).report
    executed = {d[i]["class_type"] + ("+" if i == pos else "") for i in d
                if isinstance(d[i], dict) and "class_type" in d[i] and report[i].status == "executed"}
    assert executed == {"WanTextEncode+", "WanDenoise", "WanVAEDecode", "SaveTensor", "SaveImagesAsVideo"}
    assert report[next(i for i in d if d[i].get("class_type") == "WanPipelineLoader")].status == "cached"


def test_python_api_text_to_video_matches_diffusers(tiny):
    """`load_pipeline(folder).text_to_video(...)`, no graph, equals diffusers for the seed's noise."""
    from diffusers import UniPCMultistepScheduler
    from nodes.wan.pipelines.pipeline import load_pipeline
    folder, pipe = tiny
    # the saved config: other tests swap the shared pipeline's scheduler
    pipe.scheduler = UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    ref = reference_frames(pipe, PROMPT, NEGATIVE, make_noise(7, LATENT_SHAPE), H, W, F, 3, 5.0)[0]
    ours = load_pipeline(folder).text_to_video(PROMPT, NEGATIVE, height=H, width=W, num_frames=F, steps=3,
                                               guidance=5.0, shift=3.0, seed=7)[0]
    assert rel_err(ours, ref) < TOL


SHORT = 24   # a max_sequence_length other than 512


def diffusers_output(pipe, noise, steps, guidance, max_sequence_length, output_type):
    """WanPipeline's frames [F, H, W, 3] ("np") or final normalised latents [C, T, h, w] ("latent")."""
    import torch
    with torch.no_grad():
        out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=F, num_inference_steps=steps,
                   guidance_scale=guidance, latents=torch.from_numpy(noise), output_type=output_type,
                   max_sequence_length=max_sequence_length).frames
    return (out.numpy() if hasattr(out, "numpy") else np.asarray(out))[0]


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_text_max_length_matches_diffusers_max_sequence_length(tiny, tmp_path, guidance):
    """WanTextEncode's max_length = diffusers' max_sequence_length: the zero rows past the prompt go
    through the text embedder and the un-masked cross-attention, so 24 tokens give another video than
    512; with and without CFG the graph's final latents and frames are diffusers' at 24."""
    from diffusers import UniPCMultistepScheduler
    folder, pipe = tiny
    pipe.scheduler = UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    noise = make_noise(3, LATENT_SHAPE)
    ref_latents = diffusers_output(pipe, noise, 3, guidance, SHORT, "latent")
    ref_frames = diffusers_output(pipe, noise, 3, guidance, SHORT, "np")
    at_512 = diffusers_output(pipe, noise, 3, guidance, 512, "latent")
    assert rel_err(at_512, ref_latents) > 1e-3, "the text length does not matter here: the test could not fail"

    ex = Executor(output_dir=tmp_path)
    g, dec = t2v_graph(folder, steps=3, guidance=guidance, seed=3, max_length=SHORT)
    frames, _ = run_frames(ex, g, dec)
    den = next(i for i, n in g.to_dict().items() if n.get("class_type") == "WanDenoise")
    latents = ex.run(g.to_workflow(), targets=[den]).outputs[den]["latent"]["samples"].asnumpy()[0]  # cached
    assert latents.shape == ref_latents.shape and frames.shape == ref_frames.shape == (F, H, W, 3)
    assert rel_err(latents, ref_latents) < 1e-4, f"latents differ from diffusers by {rel_err(latents, ref_latents):.2e}"
    assert rel_err(frames, ref_frames) < 5e-4, f"frames differ from diffusers by {rel_err(frames, ref_frames):.2e}"
    if guidance > 1:   # the library: WanPipeline.text_to_video(max_sequence_length=...) as diffusers'
        from nodes.wan.pipelines.pipeline import load_pipeline
        api = load_pipeline(folder).text_to_video(PROMPT, NEGATIVE, height=H, width=W, num_frames=F, steps=3,
                                                  guidance=guidance, shift=3.0, seed=3, max_sequence_length=SHORT)[0]
        assert rel_err(api, ref_frames) < 5e-4
