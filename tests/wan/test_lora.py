"""LoRA files against diffusers (`WanLoraLoaderMixin.load_lora_weights`, PEFT): files diffusers itself
saved (its LoraConfig in the header: lora_alpha != r, rank/alpha patterns, rsLoRA, lora_bias, targets),
ComfyUI / LightX2V step-distillation files (alpha, diff_b, norm / modulation / full-weight deltas,
embedders, head, image branch) and kohya / musubi files; on the transformer, then through the graph
(two strengths, 32-token prompts) and on Wan2.2's two experts (`load_into_transformer_2`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file as torch_save_file

import mindspore as ms

from nodes.wan import load_transformer, read_lora, with_lora
from nodes.wan.checkpoints.original_format import original_key
from nodes.wan.checkpoints.safetensors_io import CheckpointError
from tests.wan.parity import rel_err, to_numpy
from tests.wan.reference import I2V_KINDS, TINY_TRANSFORMER, torch_one_thread

TOL = 1e-5                   # one transformer forward, fp32
FRAMES_TOL, LATENTS_TOL = 5e-4, 1e-4
I2V_TRANSFORMER = {**TINY_TRANSFORMER, **I2V_KINDS["wan21"]["transformer"]}
RANK = 4
LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


# ---------------------------------------------------------------------------------------------- files

def _shapes(config):
    from diffusers import WanTransformer3DModel
    return {k: tuple(v.shape) for k, v in WanTransformer3DModel(**config).state_dict().items()}


def save_peft(folder, config_kwargs, seed=0, adapter=False, metadata=None):
    """A LoRA file as diffusers writes it: PEFT adapter on a diffusers transformer, weights random, then
    `WanPipeline.save_lora_weights(..., transformer_lora_adapter_metadata=...)` (or, with `adapter`,
    `WanTransformer3DModel.save_lora_adapter`: unprefixed keys and header)."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig, get_peft_model_state_dict
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY_TRANSFORMER)
    model.add_adapter(LoraConfig(**config_kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    if adapter:
        model.save_lora_adapter(folder, weight_name="lora.safetensors")
    else:
        meta = metadata or model.peft_config["default"].to_dict()
        WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model),
                                      transformer_lora_adapter_metadata=meta, weight_name="lora.safetensors")
    return folder / "lora.safetensors"


def save_kohya(path, config=TINY_TRANSFORMER, seed=0):
    """musubi-tuner's layout: lora_unet_blocks_N_..., lora_down / lora_up / alpha on every block linear."""
    shapes, g, sd = _shapes(config), torch.Generator().manual_seed(seed), {}
    for i in range(config["num_layers"]):
        for m in LINEARS:
            out, inp = shapes[f"blocks.{i}.{m}.weight"]
            key = "lora_unet_" + original_key(f"blocks.{i}.{m}.weight")[:-len(".weight")].replace(".", "_")
            sd[f"{key}.lora_down.weight"] = torch.randn(RANK, inp, generator=g) * 0.3
            sd[f"{key}.lora_up.weight"] = torch.randn(out, RANK, generator=g) * 0.3
            sd[f"{key}.alpha"] = torch.tensor(1.0 + i)
    torch_save_file(sd, str(path))
    return path


def save_distill(path, config=TINY_TRANSFORMER, seed=0, i2v=False):
    """A LightX2V / CausVid / Lightning-style file (Kijai's and lightx2v's keys, `diffusion_model.` prefix).
    Returns the path and the keys diffusers' converter drops, each with a delta big enough to show."""
    shapes, g, sd, dropped = _shapes(config), torch.Generator().manual_seed(seed), {}, []
    d = config["num_attention_heads"] * config["attention_head_dim"]

    def rnd(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    def pair(ours, alpha=None, bias=True):
        o = "diffusion_model." + original_key(ours + ".weight")[:-len(".weight")]
        out, inp = shapes[ours + ".weight"]
        sd[o + ".lora_down.weight"], sd[o + ".lora_up.weight"] = rnd(RANK, inp), rnd(out, RANK)
        if alpha is not None:
            sd[o + ".alpha"] = torch.tensor(alpha)
        if bias:
            sd[o + ".diff_b"] = rnd(out, s=0.2)

    def drop(key, value):
        sd["diffusion_model." + key] = value
        dropped.append("diffusion_model." + key)

    linears = LINEARS + (("attn2.add_k_proj", "attn2.add_v_proj") if i2v else ())
    for i in range(config["num_layers"]):
        for m in linears:   # alpha 1 at rank 4: diffusers rebalances the scale between down and up
            pair(f"blocks.{i}.{m}", alpha=1.0 if m.startswith("attn1") else 6.0)
        for n in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k", "norm3") + \
                (("cross_attn.norm_k_img",) if i2v else ()):
            drop(f"blocks.{i}.{n}.diff", 1 + rnd(d, s=0.5))
        drop(f"blocks.{i}.norm3.diff_b", rnd(d, s=0.5))
        drop(f"blocks.{i}.diff_m", rnd(1, 6, d, s=0.5))
    drop("blocks.0.self_attn.q.diff", rnd(d, d))
    drop("head.modulation.diff", rnd(1, 2, d, s=0.5))
    drop("patch_embedding.diff_b", rnd(d, s=0.5))
    for m in ("condition_embedder.text_embedder.linear_1", "condition_embedder.text_embedder.linear_2",
              "condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2"):
        pair(m)
    if i2v:
        pair("condition_embedder.image_embedder.ff.net.0.proj")
        pair("condition_embedder.image_embedder.ff.net.2")
        drop("img_emb.proj.0.diff", 1 + rnd(config["image_dim"], s=0.5))
        drop("img_emb.proj.0.diff_b", rnd(config["image_dim"], s=0.5))
        drop("time_projection.1.diff_b", rnd(6 * d))         # AccVideo: a bias with no time_projection weight
    else:
        pair("condition_embedder.time_proj")
        out = shapes["proj_out.weight"][0]
        sd["diffusion_model.head.head.diff"], sd["diffusion_model.head.head.diff_b"] = rnd(out, d), rnd(out)
    torch_save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, dropped


def add_dropped(ref, path, keys, strength):
    """What ComfyUI / LightX2V do with the keys diffusers drops: `param + strength * delta`."""
    from safetensors.torch import load_file
    sd, state = load_file(str(path)), ref.state_dict()
    by_original = {original_key(n): n for n in state}
    with torch.no_grad():
        for key in keys:
            k = key[len("diffusion_model."):]
            if k.endswith(".diff_m"):
                name = by_original[k[:-len(".diff_m")] + ".modulation"]
            elif k.endswith(".diff_b"):
                name = by_original[k[:-len(".diff_b")] + ".bias"]
            else:
                k = k[:-len(".diff")]
                name = by_original.get(k + ".weight") or by_original[k]
            state[name].add_(strength * sd[key])


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_one_thread():
        yield


# ------------------------------------------------------------------------------------ the transformer

@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Tiny T2V and I2V transformers saved by diffusers (weights perturbed so nothing is at its init)."""
    from diffusers import WanTransformer3DModel
    folders = {}
    for kind, config in (("t2v", TINY_TRANSFORMER), ("i2v", I2V_TRANSFORMER)):
        folders[kind] = tmp_path_factory.mktemp(kind)
        torch.manual_seed(0)
        ref = WanTransformer3DModel(**config).eval()
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ref.save_pretrained(folders[kind])
    return folders


def diffusers_load(model, path, adapter_name, prefix="transformer"):
    """`WanPipeline.load_lora_weights` on one transformer: convert, read the header's LoraConfig, load."""
    from diffusers import WanPipeline
    if prefix is None:
        model.load_lora_adapter(str(path.parent), weight_name=path.name, prefix=None, adapter_name=adapter_name)
        return
    state, metadata = WanPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    state = WanPipeline._maybe_expand_t2v_lora_for_i2v(model, state)
    WanPipeline.load_lora_into_transformer(state, transformer=model, adapter_name=adapter_name, metadata=metadata)


def reference(folder, loras, extra=None):
    """diffusers' transformer with `loras` [(path, strength, prefix)] as adapters; `extra` (path, keys,
    strength) adds dropped deltas to its weights first."""
    from diffusers import WanTransformer3DModel
    ref = WanTransformer3DModel.from_pretrained(folder).eval()
    if extra:
        add_dropped(ref, *extra)
    names = []
    for n, (path, _, prefix) in enumerate(loras):
        diffusers_load(ref, path, f"l{n}", prefix)
        names.append(f"l{n}")
    ref.set_adapters(names, [s for _, s, _ in loras])
    return ref


def inputs(kind="t2v", seed=0):
    rng = np.random.default_rng(seed)
    channels = I2V_TRANSFORMER["in_channels"] if kind == "i2v" else 16
    x = [rng.standard_normal((1, channels, 3, 4, 6)).astype(np.float32), np.array([600], np.int64),
         rng.standard_normal((1, 512 if kind == "i2v" else 20, 32)).astype(np.float32)]   # I2V splits at 512
    if kind == "i2v":
        x.append(rng.standard_normal((1, 17, I2V_TRANSFORMER["image_dim"])).astype(np.float32))
    return x


def run(ref, ours, x):
    with torch.no_grad():
        r = ref(*[torch.from_numpy(a) for a in x], return_dict=False)[0].numpy()
    return ours(*[ms.Tensor(a) for a in x]).asnumpy(), r


PEFT_FILES = {
    # lora_alpha != r: every module at scale 0.5
    "diffusers": dict(r=4, lora_alpha=2, target_modules=PEFT_TARGETS),
    # per-module rank and alpha by PEFT's suffix / regex patterns, lora_B biases (scaled too), the head
    "diffusers_patterns": dict(r=4, lora_alpha=2, lora_bias=True, target_modules=PEFT_TARGETS + ["proj_out"],
                               rank_pattern={"attn2.to_k": 2, r"blocks\.1\.ffn\.net\.0\.proj": 8},
                               alpha_pattern={"to_out.0": 8, r"blocks\.0\.attn1\.to_(q|v)": 1, "proj_out": 3}),
    # save_lora_adapter: no `transformer.` prefix; rsLoRA (alpha / sqrt(r)); targets as one regex
    "peft_adapter": dict(r=4, lora_alpha=3, use_rslora=True, target_modules=r".*attn[12]\.to_(q|k|v)"),
}


def make_file(fmt, folder, kind="t2v", seed=0):
    """(path, keys diffusers drops, load prefix)."""
    if fmt in PEFT_FILES:
        return save_peft(folder, PEFT_FILES[fmt], seed, adapter=fmt == "peft_adapter"), [], \
            (None if fmt == "peft_adapter" else "transformer")
    if fmt == "kohya":
        return save_kohya(folder / "kohya.safetensors", seed=seed), [], "transformer"
    path, dropped = save_distill(folder / "distill.safetensors", I2V_TRANSFORMER if kind == "i2v" else
                                 TINY_TRANSFORMER, seed, i2v=kind == "i2v")
    return path, dropped, "transformer"


@pytest.mark.parametrize("fmt, kind, compiled", [
    ("diffusers", "t2v", False), ("diffusers_patterns", "t2v", False),
    ("peft_adapter", "t2v", False), ("distill", "t2v", False), ("distill", "t2v", True), ("distill", "i2v", False),
    ("kohya", "t2v", False)])
def test_lora_file_matches_diffusers(bases, tmp_path, fmt, kind, compiled):
    path, dropped, prefix = make_file(fmt, tmp_path, kind)
    model = load_transformer(bases[kind], subfolder=None)
    if compiled:
        model.compile()
    x = inputs(kind)
    plain = model(*[ms.Tensor(a) for a in x]).asnumpy()
    lora = read_lora(path, model)
    assert sorted(lora.skipped) == sorted(dropped)          # each dropped key named, nothing else
    o, r = run(reference(bases[kind], [(path, 0.7, prefix)]), with_lora(model, lora, 0.7), x)
    assert rel_err(o, r) < TOL
    assert rel_err(o, plain) > 1e-2                         # the LoRA changes the output...
    assert np.array_equal(model(*[ms.Tensor(a) for a in x]).asnumpy(), plain)   # ...not the base model


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_full_deltas_apply_what_diffusers_drops(bases, tmp_path, kind):
    """full_deltas: norm, modulation and full-weight deltas added to the weights (ComfyUI, LightX2V)."""
    path, dropped, _ = make_file("distill", tmp_path, kind)
    model = load_transformer(bases[kind], subfolder=None)
    lora = read_lora(path, model, full_deltas=True)
    assert lora.skipped == {}
    x = inputs(kind, seed=1)
    o, r = run(reference(bases[kind], [(path, -0.6, "transformer")], extra=(path, dropped, -0.6)),
               with_lora(model, lora, -0.6), x)
    assert rel_err(o, r) < TOL
    skipped_too = with_lora(model, read_lora(path, model), -0.6)(*[ms.Tensor(a) for a in x]).asnumpy()
    assert rel_err(skipped_too, r) > 1e-2                   # the dropped deltas do matter


def test_lora_config_header_and_stacking(bases, tmp_path):
    """The file's keys decide which modules get a LoRA (diffusers hands PEFT the state dict), whatever
    target_modules / exclude_modules the header says; lora_B.bias keys under lora_bias=false are ignored by
    PEFT, so skipped by us, by name. Two files stack, with strengths of both signs."""
    from peft import LoraConfig
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    saved = dict(PEFT_FILES["diffusers"], lora_bias=True)
    header = dict(PEFT_FILES["diffusers"], target_modules=["to_q"], exclude_modules=["blocks.1.ffn.net.2"],
                  lora_bias=False)
    narrow = save_peft(tmp_path / "a", saved, seed=3, metadata=LoraConfig(**header).to_dict())
    kohya = save_kohya(tmp_path / "b" / "k.safetensors", seed=4)
    model = load_transformer(bases["t2v"], subfolder=None)
    first = read_lora(narrow, model)
    assert len(first.down) == 2 * len(LINEARS)
    assert sorted(first.skipped) == sorted(f"transformer.blocks.{i}.{m}.lora_B.bias" for i in range(2) for m in LINEARS)
    both = with_lora(with_lora(model, first, 0.5), read_lora(kohya, model), -0.8)
    o, r = run(reference(bases["t2v"], [(narrow, 0.5, "transformer"), (kohya, -0.8, "transformer")]), both,
               inputs(seed=2))
    assert rel_err(o, r) < TOL


def test_unsupported_and_mismatched_files_are_refused(bases, tmp_path):
    model = load_transformer(bases["t2v"], subfolder=None)
    big = tmp_path / "big.safetensors"
    torch_save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 1536),
                     "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(1536, 4)}, str(big))
    with pytest.raises(CheckpointError, match="another Wan model size"):
        read_lora(big, model)
    empty = tmp_path / "empty.safetensors"
    torch_save_file({"foo.bar": torch.zeros(1)}, str(empty))
    with pytest.raises(CheckpointError, match="no LoRA weights"):
        read_lora(empty, model)
    for sub, extra in (("dora", dict(use_dora=True)), ("rank", dict(rank_pattern={"to_q": 2}))):
        (tmp_path / sub).mkdir()
        path = save_peft(tmp_path / sub, PEFT_FILES["diffusers"])
        if sub == "rank":          # a header that does not describe the tensors (PEFT fails to load it too)
            from peft import LoraConfig
            path = save_peft(tmp_path / sub, PEFT_FILES["diffusers"],
                             metadata=LoraConfig(**PEFT_FILES["diffusers"], **extra).to_dict())
            with pytest.raises(CheckpointError, match="rank 4 but the file's LoRA config gives it rank 2"):
                read_lora(path, model)
        else:
            with pytest.raises(CheckpointError, match="DoRA"):
                read_lora(save_peft(tmp_path / sub, dict(PEFT_FILES["diffusers"], **extra)), model)
    scale = tmp_path / "dora_scale.safetensors"
    torch_save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 24),
                     "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(24, 4),
                     "diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(1, 24)}, str(scale))
    with pytest.raises(CheckpointError, match="DoRA"):
        read_lora(scale, model)


# --------------------------------------------------------------------------------------- through the graph

MAX_LENGTH = 32
STRENGTHS = (0.7, -0.4)
NOISE_SEED, STEPS, GUIDANCE, SIZE = 2, 3, 5.0, dict(width=48, height=32, num_frames=5)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    """One tiny diffusers WanPipeline (saved), its Wan2.2-style two-expert sibling, the LoRA files and a
    shared Executor (so the loader and the prompts run once for the module)."""
    from graphrt import Executor
    from graphrt.registry import load_node_packs
    from tests.wan.reference import build_tiny_wan_pipeline
    load_node_packs()
    root = tmp_path_factory.mktemp("t2v")
    pipe = build_tiny_wan_pipeline(root / "pipe")
    pipe2 = build_tiny_wan_pipeline(root / "experts", boundary_ratio=0.875)
    files = {}
    for fmt in ("diffusers_patterns", "distill", "kohya"):
        (root / fmt).mkdir()
        files[fmt] = make_file(fmt, root / fmt, seed=5)[:2]
    return dict(pipe=pipe, pipe2=pipe2, root=root, files=files, ex=Executor(output_dir=root / "out"))


def lora_graph(source, branches):
    """Loader, two prompts, and per branch (lora, strength, apply_to): WanLoraLoader -> WanDenoise ->
    WanVAEDecode. Returns the builder and per branch the (lora, denoise, decode) nodes."""
    from graphrt import GraphBuilder
    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source=str(source))
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a fox", max_length=MAX_LENGTH)
    neg = g.node("WanTextEncode", text_encoder=load[1], text="", max_length=MAX_LENGTH)
    lat = g.node("WanEmptyLatentVideo", **SIZE)
    nodes = []
    for path, strength, apply_to in branches:
        lora = g.node("WanLoraLoader", model=load[0], lora=str(path), strength=strength, apply_to=apply_to)
        den = g.node("WanDenoise", model=lora[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=NOISE_SEED,
                     steps=STEPS, guidance=GUIDANCE)
        nodes.append((lora, den, g.node("WanVAEDecode", vae=load[2], latent=den[0])))
    return g, nodes


def run_graph(ex, g, nodes):
    """[(latents, frames, skipped, report ui)] per branch."""
    res = ex.run(g.to_workflow(), targets=[n.id for b in nodes for n in b])
    return [(to_numpy(res.outputs[d.id]["latent"]["samples"]), to_numpy(res.outputs[v.id]["images"]),
             res.outputs[lo.id]["skipped"], res.report[lo.id].ui) for lo, d, v in nodes]


def diffusers_run(pipe):
    """diffusers' final latents (output_type="latent") and frames [F, H, W, 3] for the graph's call."""
    from nodes.wan.pipelines.noise import make_noise
    from tests.wan.reference import reference_outputs
    frames, latents = reference_outputs(pipe, make_noise(NOISE_SEED, (1, 16, 2, 4, 6)), prompt="a fox",
                                        negative_prompt="", num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                                        max_sequence_length=MAX_LENGTH, **SIZE)
    return latents, frames[0]


@pytest.mark.parametrize("fmt", ["diffusers_patterns", "distill", "kohya"])
def test_lora_loader_node_matches_diffusers_pipeline(t2v, fmt):
    """WanLoraLoader in a T2V graph at two strengths equals WanPipeline.load_lora_weights + set_adapters;
    the keys diffusers drops come out of the node by name and into the run report."""
    pipe, (path, dropped) = t2v["pipe"], t2v["files"][fmt]
    g, nodes = lora_graph(t2v["root"] / "pipe", [(path, s, "transformer") for s in STRENGTHS])
    ours = run_graph(t2v["ex"], g, nodes)
    pipe.load_lora_weights(str(path), adapter_name=fmt)
    try:
        for strength, (latents, frames, skipped, ui) in zip(STRENGTHS, ours):
            pipe.set_adapters([fmt], [strength])
            ref_latents, ref_frames = diffusers_run(pipe)
            assert rel_err(latents, ref_latents) < LATENTS_TOL
            assert rel_err(frames, ref_frames) < FRAMES_TOL
            assert sorted(line.split(": ")[0] for line in skipped.splitlines()) == sorted(dropped)
            assert ui.get("lora_skipped", []) == skipped.splitlines()
    finally:
        pipe.delete_adapters([fmt])
    assert rel_err(ours[0][0], ours[1][0]) > 1e-2           # the strength matters


def test_lora_on_two_experts_matches_load_into_transformer_2(t2v):
    """Wan2.2 A14B: apply_to=transformer_2 is diffusers' load_lora_weights(..., load_into_transformer_2=True);
    apply_to=both is the file loaded into each expert."""
    pipe, (path, _) = t2v["pipe2"], t2v["files"]["distill"]
    g, nodes = lora_graph(t2v["root"] / "experts", [(path, 0.8, "transformer_2"), (path, 0.6, "both")])
    (low_lat, low_frames, *_), (both_lat, both_frames, *_) = run_graph(t2v["ex"], g, nodes)
    pipe.load_lora_weights(str(path), adapter_name="low", load_into_transformer_2=True)
    try:
        assert not getattr(pipe.transformer, "peft_config", None)      # the high-noise expert is untouched
        pipe.transformer_2.set_adapters(["low"], [0.8])
        ref_lat, ref_frames = diffusers_run(pipe)
        steps = pipe.scheduler.timesteps.numpy()
        assert (steps >= 875).any() and (steps < 875).any()            # both experts run
        assert rel_err(low_lat, ref_lat) < LATENTS_TOL and rel_err(low_frames, ref_frames) < FRAMES_TOL
        pipe.load_lora_weights(str(path), adapter_name="high")
        pipe.transformer.set_adapters(["high"], [0.6])
        pipe.transformer_2.set_adapters(["low"], [0.6])
        ref_lat, ref_frames = diffusers_run(pipe)
        assert rel_err(both_lat, ref_lat) < LATENTS_TOL and rel_err(both_frames, ref_frames) < FRAMES_TOL
    finally:
        pipe.unload_lora_weights()
    assert rel_err(low_lat, both_lat) > 1e-2


def test_lora_loader_node_rejects_a_missing_file(tmp_path):
    from graphrt import Executor, GraphBuilder
    from graphrt.errors import WorkflowError
    from graphrt.registry import load_node_packs
    load_node_packs()
    b = GraphBuilder()
    load = b.node("WanModelLoader", source="tiny")
    b.node("WanLoraLoader", id="l", model=load[0], lora=str(tmp_path / "nope.safetensors"))
    with pytest.raises(WorkflowError, match="LoRA file not found"):
        Executor(output_dir=tmp_path).run(b.to_workflow(), targets=["l"])
