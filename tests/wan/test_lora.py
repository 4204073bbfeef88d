"""LoRA on the Wan transformer against diffusers' `load_lora_adapter` (PEFT), in the three formats."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file as torch_save_file

import mindspore as ms

from nodes.wan import load_transformer
from nodes.wan import read_lora, with_lora
from nodes.wan.checkpoints.safetensors_io import CheckpointError
from nodes.wan.checkpoints.original_format import original_key
from tests.wan.parity import rel_err

TOL = 1e-5
CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
              text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
RANK = 4
TARGETS = [f"blocks.{i}.{m}" for i in range(2) for m in
           ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
            "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from diffusers import WanTransformer3DModel
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**CONFIG).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(folder)
    return folder


def lora_tensors(seed=0):
    """{module: (A [r, in], B [out, r], alpha)} for every linear of both blocks."""
    from diffusers import WanTransformer3DModel
    shapes = {k[:-len(".weight")]: tuple(v.shape) for k, v in WanTransformer3DModel(**CONFIG).state_dict().items()
              if k.endswith(".weight")}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in TARGETS:
        o, i = shapes[m]
        out[m] = (torch.randn(RANK, i, generator=g) * 0.3, torch.randn(o, RANK, generator=g) * 0.3, 2.0)
    return out


def write(fmt, tensors, path, diff_b=None):
    sd = {}
    for m, (a, b, alpha) in tensors.items():
        if fmt == "diffusers":   # PEFT keys, alpha folded in (PEFT uses lora_alpha = r)
            sd[f"transformer.{m}.lora_A.weight"] = a * (alpha / RANK)
            sd[f"transformer.{m}.lora_B.weight"] = b
        elif fmt == "comfy":
            o = original_key(m + ".weight")[:-len(".weight")]
            sd[f"diffusion_model.{o}.lora_down.weight"] = a
            sd[f"diffusion_model.{o}.lora_up.weight"] = b
            sd[f"diffusion_model.{o}.alpha"] = torch.tensor(alpha)
        else:                    # kohya / musubi
            o = original_key(m + ".weight")[:-len(".weight")]
            k = "lora_unet_" + o.replace(".", "_")
            sd[f"{k}.lora_down.weight"] = a
            sd[f"{k}.lora_up.weight"] = b
            sd[f"{k}.alpha"] = torch.tensor(alpha)
    if diff_b:
        for m, v in diff_b.items():
            sd[f"diffusion_model.{original_key(m + '.bias')[:-len('.bias')]}.diff_b"] = v
    torch_save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


def reference(base, path, strength):
    from diffusers import WanPipeline, WanTransformer3DModel
    ref = WanTransformer3DModel.from_pretrained(base).eval()
    state = WanPipeline.lora_state_dict(str(path))
    state = state[0] if isinstance(state, tuple) else state
    ref.load_lora_adapter(state, prefix="transformer", adapter_name="x")
    ref.set_adapters(["x"], [strength])
    return ref


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, 16, 3, 4, 6)).astype(np.float32), np.array([600], np.int64),
            rng.standard_normal((1, 512, 32)).astype(np.float32))


def run(ref, ours, x, t, ctx):
    with torch.no_grad():
        r = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), return_dict=False)[0].numpy()
    return ours(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx)).asnumpy(), r


@pytest.mark.parametrize("fmt", ["diffusers", "comfy", "kohya"])
@pytest.mark.parametrize("compiled", [False, True])
def test_lora_matches_diffusers(base, tmp_path, fmt, compiled):
    path = tmp_path / f"{fmt}.safetensors"
    write(fmt, lora_tensors(), path)
    model = load_transformer(base, subfolder=None)
    if compiled:
        model.compile()
    x, t, ctx = inputs()
    plain = model(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx)).asnumpy()
    patched = with_lora(model, read_lora(path, model), 0.7)
    o, r = run(reference(base, path, 0.7), patched, x, t, ctx)
    assert rel_err(o, r) < TOL
    assert rel_err(o, plain) > 1e-2          # the LoRA changes the output...
    again = model(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx)).asnumpy()
    assert np.array_equal(again, plain)      # ...and leaves the base model untouched


def test_bias_deltas_and_stacked_loras(base, tmp_path):
    """ComfyUI `diff_b` bias deltas (diffusers turns them into lora_B.bias), and two LoRAs added up."""
    p1, p2 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    g = torch.Generator().manual_seed(5)
    write("comfy", lora_tensors(1), p1, diff_b={"blocks.0.attn1.to_q": torch.randn(24, generator=g) * 0.2,
                                               "proj_out": torch.randn(64, generator=g) * 0.2})
    write("comfy", lora_tensors(2), p2)
    model = load_transformer(base, subfolder=None)
    both = with_lora(with_lora(model, read_lora(p1, model), 0.5), read_lora(p2, model), -0.8)
    from diffusers import WanPipeline, WanTransformer3DModel
    ref = WanTransformer3DModel.from_pretrained(base).eval()
    for name, p in (("a", p1), ("b", p2)):
        state = WanPipeline.lora_state_dict(str(p))
        ref.load_lora_adapter(state[0] if isinstance(state, tuple) else state, prefix="transformer",
                              adapter_name=name)
    ref.set_adapters(["a", "b"], [0.5, -0.8])
    o, r = run(ref, both, *inputs(1))
    assert rel_err(o, r) < TOL


def test_lora_for_another_model_is_refused(base, tmp_path):
    path = tmp_path / "big.safetensors"
    torch_save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 1536),
                     "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(1536, 4)}, str(path))
    model = load_transformer(base, subfolder=None)
    with pytest.raises(CheckpointError, match="another Wan model size"):
        read_lora(path, model)
    empty = tmp_path / "empty.safetensors"
    torch_save_file({"foo.bar": torch.zeros(1)}, str(empty))
    with pytest.raises(CheckpointError, match="no LoRA weights"):
        read_lora(empty, model)


def test_lora_loader_node_matches_diffusers_pipeline(tmp_path):
    """WanLoraLoader in a T2V graph equals WanPipeline.load_lora_weights + set_adapters."""
    from graphrt import Executor, GraphBuilder
    from graphrt.registry import load_node_packs
    from nodes.wan.pipelines.noise import make_noise
    from tests.wan.reference import build_tiny_wan_pipeline, reference_frames
    load_node_packs()
    pipe = build_tiny_wan_pipeline(tmp_path / "pipe")
    shapes = {k[:-len(".weight")]: tuple(v.shape) for k, v in pipe.transformer.state_dict().items()
              if k.endswith(".weight") and v.ndim == 2 and k.startswith("blocks.")}
    g = torch.Generator().manual_seed(3)
    sd = {}
    for m, (o, i) in shapes.items():
        key = "diffusion_model." + original_key(m + ".weight")[:-len(".weight")]
        sd[key + ".lora_down.weight"] = torch.randn(2, i, generator=g) * 0.3
        sd[key + ".lora_up.weight"] = torch.randn(o, 2, generator=g) * 0.3
        sd[key + ".alpha"] = torch.tensor(1.0)
    lora = tmp_path / "style.safetensors"
    torch_save_file(sd, str(lora))

    b = GraphBuilder()
    load = b.node("WanPipelineLoader", source=str(tmp_path / "pipe"))
    styled = b.node("WanLoraLoader", model=load[0], lora=str(lora), strength=0.6)
    pos = b.node("WanTextEncode", text_encoder=load[1], text="a fox")
    neg = b.node("WanTextEncode", text_encoder=load[1], text="")
    lat = b.node("WanEmptyLatentVideo", width=48, height=32, num_frames=9)
    den = b.node("WanDenoise", model=styled[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=2, steps=3,
                 guidance=5.0)
    dec = b.node("WanVAEDecode", vae=load[2], latent=den[0])
    b.node("SaveTensor", tensor=dec[0], filename_prefix="lora", format="npy")
    res = Executor(output_dir=tmp_path / "out").run(b.to_workflow())
    ours = np.load([v["path"] for v in res.outputs.values()][0])

    pipe.load_lora_weights(str(lora), adapter_name="style")
    pipe.set_adapters(["style"], [0.6])
    ref = reference_frames(pipe, "a fox", "", make_noise(2, (1, 16, 3, 4, 6)), 32, 48, 9, 3, 5.0)[0]
    assert rel_err(ours, ref) < 1e-4


def test_lora_loader_node_rejects_a_missing_file(tmp_path):
    from graphrt import GraphBuilder
    from graphrt.errors import WorkflowError
    from graphrt.registry import load_node_packs
    from graphrt import Executor
    load_node_packs()
    b = GraphBuilder()
    load = b.node("WanModelLoader", source="tiny")
    b.node("WanLoraLoader", id="l", model=load[0], lora=str(tmp_path / "nope.safetensors"))
    with pytest.raises(WorkflowError, match="LoRA file not found"):
        Executor(output_dir=tmp_path).run(b.to_workflow(), targets=["l"])
