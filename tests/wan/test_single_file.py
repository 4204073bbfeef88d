"""Single-file transformers with the original Wan / ComfyUI key names, against diffusers.

Each test writes a tiny diffusers model's weights under the original names (our
`original_key`), checks that diffusers' own single-file converter reads that file
back to the same model (so the mapping is not only checked against itself), then
loads the file with our loader, config inferred from the tensors, and compares
outputs. What no tensor records (a transformer's head count, a VAE's latent mean and
std) is the released model's for a released size; the tiny files pass it as `config`.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file as torch_save_file

import mindspore as ms

from nodes.wan import load_transformer
from nodes.wan.checkpoints.safetensors_io import CheckpointError
from nodes.wan.checkpoints.original_format import original_key
from tests.wan.parity import rel_err

TOL = 1e-5
# head_dim 128 as in every released Wan model (the files do not record it, and dim 128 is no released
# size: the loader is told the head count, HEADS, and infers the rest).
BASE = dict(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, eps=1e-6,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
CONFIGS = {
    "t2v": BASE,
    "i2v": {**BASE, "in_channels": 36, "image_dim": 24, "added_kv_proj_dim": 128},
    "flf2v": {**BASE, "in_channels": 36, "image_dim": 24, "added_kv_proj_dim": 128, "pos_embed_seq_len": 10},
    "ti2v": {**BASE, "in_channels": 48, "out_channels": 48},
    "vace": {**BASE, "num_layers": 4, "vace_layers": [0, 2], "vace_in_channels": 12},
}
HEADS = {"num_attention_heads": 1}
UNDECIDABLE = {name: {**HEADS, **({"vace_layers": cfg["vace_layers"]} if "vace_layers" in cfg else {})}
               for name, cfg in CONFIGS.items()}


def _reference(name):
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
    cls = WanVACETransformer3DModel if name == "vace" else WanTransformer3DModel
    torch.manual_seed(0)
    ref = cls(**CONFIGS[name]).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref


def _write_original(ref, path, prefix="", dtype=torch.float32):
    sd = {prefix + original_key(k): v.detach().to(dtype).contiguous() for k, v in ref.state_dict().items()}
    torch_save_file(sd, str(path))
    return sd


def _inputs(cfg, rng):
    x = rng.standard_normal((1, cfg["in_channels"], 3, 4, 6)).astype(np.float32)
    ctx = rng.standard_normal((1, 512, cfg["text_dim"])).astype(np.float32)
    return x, ctx


def _run_reference(ref, x, t, ctx, img=None, control=None):
    kw = {} if control is None else {"control_hidden_states": torch.from_numpy(control)}
    with torch.no_grad():
        return ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                   None if img is None else torch.from_numpy(img), return_dict=False, **kw)[0].numpy()


def _run_ours(model, x, t, ctx, img=None, control=None):
    args = [ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), None if img is None else ms.Tensor(img)]
    if control is not None:
        args.append(ms.Tensor(control))
    return model(*args).asnumpy()


@pytest.mark.parametrize("name, prefix", [("t2v", "model.diffusion_model."), ("i2v", ""), ("flf2v", ""),
                                          ("ti2v", "model.diffusion_model."), ("vace", "")])
def test_original_single_file_matches_diffusers(tmp_path, name, prefix):
    ref = _reference(name)
    folder = tmp_path / "diffusers"
    ref.save_pretrained(folder)
    path = tmp_path / f"wan_{name}.safetensors"
    _write_original(ref, path, prefix)

    if name != "flf2v":  # diffusers' single-file converter has no mapping for FLF2V's img_emb.emb_pos
        from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
        cls = WanVACETransformer3DModel if name == "vace" else WanTransformer3DModel
        back = cls.from_single_file(str(path), config=str(folder), local_files_only=True)
        theirs = back.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(theirs[k], v), f"diffusers reads {k} differently: our key map is wrong"

    ours = load_transformer(path, config=UNDECIDABLE[name])   # the rest inferred from the tensors
    for k, v in json.loads((folder / "config.json").read_text()).items():
        if not k.startswith("_") and k in ours.config:
            expect = list(v) if isinstance(v, (list, tuple)) else v
            got = list(ours.config[k]) if isinstance(ours.config[k], (list, tuple)) else ours.config[k]
            assert got == expect, f"inferred {k}={got}, the model has {expect}"

    rng = np.random.default_rng(1)
    cfg = CONFIGS[name]
    x, ctx = _inputs(cfg, rng)
    t = np.array([700], np.int64)
    # FLF2V: the first and last frames' CLIP tokens come as two rows, joined to pos_embed_seq_len tokens
    img = rng.standard_normal((2 if name == "flf2v" else 1, 5, 24)).astype(np.float32) \
        if name in ("i2v", "flf2v") else None
    control = rng.standard_normal((1, 12, 3, 4, 6)).astype(np.float32) if name == "vace" else None
    r = _run_reference(ref, x, t, ctx, img, control)
    o = _run_ours(ours, x, t, ctx, img, control)
    assert rel_err(o, r) < TOL


def test_fp8_scaled_single_file_is_dequantised(tmp_path):
    """ComfyUI's fp8_scaled files: fp8 e4m3 weights with a per-tensor scale_weight (and a marker)."""
    ref = _reference("t2v")
    sd = {}
    with torch.no_grad():
        for k, v in ref.state_dict().items():
            key = "model.diffusion_model." + original_key(k)
            if v.ndim == 2 and k.startswith("blocks."):   # linear weights are stored scaled in fp8
                scale = v.abs().max() / 448.0
                q = (v / scale).to(torch.float8_e4m3fn)
                sd[key] = q
                sd[key[:-len(".weight")] + ".scale_weight"] = scale.reshape(1).float()
                v.copy_(q.float() * scale)            # the reference computes with the dequantised values
            else:
                sd[key] = v.contiguous()
    sd["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    path = tmp_path / "wan_t2v_fp8_scaled.safetensors"
    torch_save_file(sd, str(path))
    ours = load_transformer(path, config=HEADS)
    rng = np.random.default_rng(2)
    x, ctx = _inputs(BASE, rng)
    t = np.array([300], np.int64)
    assert rel_err(_run_ours(ours, x, t, ctx), _run_reference(ref, x, t, ctx)) < TOL


def test_explicit_config_overrides_inference(tmp_path):
    """A model whose head size is not 128 loads from a single file when its config is given."""
    cfg = {**BASE, "num_attention_heads": 2, "attention_head_dim": 64}
    from diffusers import WanTransformer3DModel
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**cfg).eval()
    path = tmp_path / "wan.safetensors"
    _write_original(ref, path)
    ours = load_transformer(path, config=cfg)
    rng = np.random.default_rng(3)
    x, ctx = _inputs(cfg, rng)
    t = np.array([10], np.int64)
    assert rel_err(_run_ours(ours, x, t, ctx), _run_reference(ref, x, t, ctx)) < TOL


def test_single_file_of_unknown_layout_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    torch_save_file({"foo.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises((CheckpointError, FileNotFoundError), match="head.modulation"):
        load_transformer(path)


def _graph(model_source, folder, low_noise="", steps=3, config="", vae_source=None, vae_config=""):
    """T2V from a transformer (`config`: WanModelLoader's), the encoder of the pipeline `folder` and a VAE
    (its folder's, or `vae_source` with `vae_config`); nodes "model", "vae", "denoise"."""
    from graphrt import GraphBuilder
    g = GraphBuilder()
    model = g.node("WanModelLoader", id="model", source=str(model_source), low_noise_source=str(low_noise),
                   config=str(config))
    te = g.node("WanTextEncoderLoader", source=str(folder))
    vae = g.node("WanVAELoader", id="vae", source=str(vae_source or folder), config=str(vae_config))
    pos = g.node("WanTextEncode", text_encoder=te[0], text="a fox")
    neg = g.node("WanTextEncode", text_encoder=te[0], text="")
    lat = g.node("WanEmptyLatentVideo", width=48, height=32, num_frames=9)
    den = g.node("WanDenoise", id="denoise", model=model[0], positive=pos[0], negative=neg[0], latent=lat[0], seed=5,
                 steps=steps, guidance=4.0, scheduler="unipc", shift=3.0)
    dec = g.node("WanVAEDecode", vae=vae[0], latent=den[0])
    g.node("SaveTensor", tensor=dec[0], filename_prefix="sf", format="npy")
    return g


def test_model_loader_node_runs_single_file_experts_like_diffusers(tmp_path):
    """The graph with WanModelLoader on two single-file experts (Wan2.2 A14B style) gives
    diffusers' WanPipeline frames for the same experts, boundary and noise."""
    from diffusers import WanTransformer3DModel
    from graphrt import Executor
    from graphrt.registry import load_node_packs
    from nodes.wan.pipelines.noise import make_noise
    from tests.wan.reference import build_tiny_wan_pipeline, reference_frames
    load_node_packs()
    pipe = build_tiny_wan_pipeline(tmp_path / "pipe")
    experts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        t = WanTransformer3DModel(**BASE).eval()
        with torch.no_grad():
            for p in t.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        _write_original(t, tmp_path / f"expert{seed}.safetensors", prefix="model.diffusion_model.")
        experts.append(t)
    pipe.transformer, pipe.transformer_2 = experts
    pipe.register_to_config(boundary_ratio=0.875)
    experts[0].save_config(tmp_path / "expert_config")   # dim 128 is no released size: its config.json says 1 head

    ex = Executor(output_dir=tmp_path / "out")
    res = ex.run(_graph(tmp_path / "expert0.safetensors", tmp_path / "pipe", low_noise=tmp_path / "expert1.safetensors",
                        config=tmp_path / "expert_config" / "config.json").to_workflow())
    ours = np.load([v["path"] for v in res.outputs.values()][0])
    ref = reference_frames(pipe, "a fox", "", make_noise(5, (1, 16, 3, 4, 6)), 32, 48, 9, 3, 4.0)[0]
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) < 1e-4


def test_single_file_transformer_and_vae_of_other_sizes_run_t2v_with_config_like_diffusers(tmp_path):
    """A transformer whose heads are not 128 wide (2 of 12) and a VAE of no released size, as single files
    with the original names: with the pipeline folder as WanModelLoader's and WanVAELoader's `config`,
    the T2V graph gives diffusers' final latents and frames. Without it, each loader names the setting
    its tensors cannot tell and the input that supplies it."""
    from graphrt import Executor
    from graphrt.errors import NodeExecutionError
    from graphrt.registry import load_node_packs
    from nodes.wan.checkpoints.original_format import vae_key_map
    from nodes.wan.pipelines.noise import make_noise
    from tests.wan.reference import TINY_TRANSFORMER, TINY_VAE, build_tiny_wan_pipeline
    load_node_packs()
    folder = tmp_path / "pipe"
    pipe = build_tiny_wan_pipeline(folder)
    assert TINY_TRANSFORMER["attention_head_dim"] != 128
    model_file, vae_file = tmp_path / "wan_tiny.safetensors", tmp_path / "wan_tiny_vae.safetensors"
    _write_original(pipe.transformer, model_file, prefix="model.diffusion_model.")
    key = vae_key_map(TINY_VAE["num_res_blocks"])
    torch_save_file({key(k): v.contiguous() for k, v in pipe.vae.state_dict().items()}, str(vae_file))

    ex = Executor(output_dir=tmp_path / "out")
    g = _graph(model_file, folder, config=folder, vae_source=vae_file, vae_config=folder)
    res = ex.run(g.to_workflow())
    frames = np.load([v["path"] for v in res.outputs.values()][0])
    latents = ex.run(g.to_workflow(), targets=["denoise"]).outputs["denoise"]["latent"]["samples"].asnumpy()[0]

    noise = make_noise(5, (1, 16, 3, 4, 6))
    with torch.no_grad():
        call = dict(prompt="a fox", negative_prompt="", height=32, width=48, num_frames=9, num_inference_steps=3,
                    guidance_scale=4.0, latents=torch.from_numpy(noise))
        ref_latents = pipe(**call, output_type="latent").frames[0].numpy()
        ref_frames = np.asarray(pipe(**call, output_type="np").frames)[0]
    assert latents.shape == ref_latents.shape and frames.shape == ref_frames.shape
    assert rel_err(latents, ref_latents) < 1e-4
    assert rel_err(frames, ref_frames) < 5e-4

    for node, config_free, names in (("model", dict(config=""), ["num_attention_heads"]),
                                     ("vae", dict(vae_config=""), ["latents_mean", "latents_std"])):
        bare = _graph(model_file, folder, vae_source=vae_file, **{"config": folder, "vae_config": folder, **config_free})
        with pytest.raises(NodeExecutionError) as info:
            Executor(output_dir=tmp_path / "out").run(bare.to_workflow(), targets=[node])
        msg = str(info.value.original)
        assert isinstance(info.value.original, CheckpointError)
        loader = {"model": "WanModelLoader", "vae": "WanVAELoader"}[node]
        assert all(n in msg for n in names) and str(model_file if node == "model" else vae_file) in msg, msg
        assert f"{loader}'s `config` input" in msg, msg


def test_released_transformer_sizes_need_no_config():
    """The head count is read off the hidden size only for the released ones (all 128-wide heads), and the
    VACE hint layers only for the released layouts; anything else names what to pass."""
    from nodes.wan.checkpoints.original_format import infer_transformer_config

    class Shapes:   # a checkpoint's keys and shapes, nothing else
        def __init__(self, dim, layers, vace=0):
            self.s = {"patch_embedding.weight": (dim, 16, 1, 2, 2), "head.head.weight": (64, dim),
                      "text_embedding.0.weight": (dim, 4096), "time_embedding.0.weight": (dim, 256)}
            for i in range(layers):
                self.s.update({f"blocks.{i}.ffn.0.weight": (8960, dim), f"blocks.{i}.norm3.weight": (dim,),
                               f"blocks.{i}.self_attn.norm_q.weight": (dim,)})
            for i in range(vace):
                self.s[f"vace_blocks.{i}.after_proj.weight"] = (dim, dim)
            if vace:
                self.s["vace_patch_embedding.weight"] = (dim, 96, 1, 2, 2)

        def keys(self):
            return self.s.keys()

        def shape(self, k):
            return self.s[k]

    for dim, heads in ((1536, 12), (3072, 24), (5120, 40)):
        cfg = infer_transformer_config(Shapes(dim, 2))
        assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["eps"]) == (heads, 128, 1e-6)
    assert infer_transformer_config(Shapes(1536, 30, vace=15))["vace_layers"] == list(range(0, 30, 2))
    assert infer_transformer_config(Shapes(5120, 40, vace=8))["vace_layers"] == list(range(0, 40, 5))
    with pytest.raises(CheckpointError, match=r"num_attention_heads of x\.safetensors .*dim 1024.*pass config="):
        infer_transformer_config(Shapes(1024, 2), where="x.safetensors")   # 8 heads of 128? 16 of 64?
    with pytest.raises(CheckpointError, match="cannot tell vace_layers"):
        infer_transformer_config(Shapes(1536, 30, vace=10))
    assert infer_transformer_config(Shapes(1024, 2), {"attention_head_dim": 64})["num_attention_heads"] == 16
    with pytest.raises(CheckpointError, match="does not divide"):
        infer_transformer_config(Shapes(1024, 2), {"num_attention_heads": 3})


def test_clip_vision_file_of_another_width_needs_config(tmp_path):
    """A CLIP tower other than Wan's 1280-wide ViT-H/14: its head count and activation are in no tensor, so
    they come from `config` (here the tower's own folder) and the states are transformers'."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from nodes.wan.pipelines.components import load_clip_vision
    from tests.wan.reference import TINY_CLIP
    torch.manual_seed(4)
    ref = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**TINY_CLIP, "hidden_act": "quick_gelu"})).eval()
    ref.save_pretrained(tmp_path / "clip")
    path = tmp_path / "files" / "clip_vision.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="num_attention_heads and hidden_act .*hidden size 16.*config="):
        load_clip_vision(str(path))
    ours = load_clip_vision(str(path), config=str(tmp_path / "clip"))
    pixels = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-2].numpy()
    assert rel_err(ours.encoder(pixels).asnumpy(), want) < TOL


VAE_CONFIG = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
# No tensor records the latent mean and std: the released VAEs' are known, these tiny ones must say.
LATENT_STATS = {"latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}


@pytest.mark.parametrize("prefix, fmt", [("", "safetensors"), ("first_stage_model.", "safetensors"), ("", "pth")])
def test_original_vae_single_file_matches_diffusers(tmp_path, prefix, fmt):
    """ComfyUI's wan_2.1_vae.safetensors, or Wan-AI's Wan2.1_VAE.pth (a torch.save zip, read without torch)."""
    from diffusers import AutoencoderKLWan
    from nodes.wan import load_vae
    from nodes.wan.checkpoints.original_format import vae_key_map
    torch.manual_seed(0)
    ref = AutoencoderKLWan(**VAE_CONFIG).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path / "vae"
    ref.save_pretrained(folder)
    key = vae_key_map(VAE_CONFIG["num_res_blocks"])
    sd = {prefix + key(k): v.contiguous() for k, v in ref.state_dict().items()}
    assert len(set(sd)) == len(sd)
    if fmt == "pth":
        path = tmp_path / "Wan2.1_VAE.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "wan_2.1_vae.safetensors"
        torch_save_file(sd, str(path))

    if not prefix and fmt == "safetensors":  # diffusers' converter reads this file back to the same weights
        back = AutoencoderKLWan.from_single_file(str(path), config=str(folder), local_files_only=True).state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(back[k], v), f"diffusers reads {k} differently: our VAE key map is wrong"

    ours = load_vae(path, config=LATENT_STATS)   # the rest inferred from the tensors
    for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample"):
        assert list(np.atleast_1d(ours.config[k])) == list(np.atleast_1d(VAE_CONFIG[k])), k
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 4, 2, 4, 6)).astype(np.float32)
    with torch.no_grad():
        r = ref.decode(torch.from_numpy(z)).sample.numpy()
    assert rel_err(ours.decode(ms.Tensor(z)).asnumpy(), r) < 1e-4


def test_model_loader_refuses_low_noise_with_a_folder(tmp_path):
    from nodes.wan import load_denoiser
    with pytest.raises(ValueError, match="low_noise_source"):
        load_denoiser("tiny", low_noise_source=str(tmp_path / "x.safetensors"))


def test_vae_loader_node_takes_a_single_file(tmp_path):
    from diffusers import AutoencoderKLWan
    from graphrt import Executor, GraphBuilder
    from graphrt.registry import load_node_packs
    from nodes.wan.checkpoints.original_format import vae_key_map
    load_node_packs()
    torch.manual_seed(1)
    ref = AutoencoderKLWan(**VAE_CONFIG).eval()
    key = vae_key_map(2)
    path = tmp_path / "vae.safetensors"
    torch_save_file({key(k): v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ref.save_config(tmp_path / "vae_config")
    g = GraphBuilder()
    g.node("WanVAELoader", id="vae", source=str(path), config=str(tmp_path / "vae_config" / "config.json"))
    vae = Executor(output_dir=tmp_path).run(g.to_workflow(), targets=["vae"]).outputs["vae"]["vae"]
    assert vae.config["z_dim"] == 4 and vae.spatial_compression == 8 and vae.temporal_compression == 4


# Wan2.1's wan/modules/t5.py module names (T5Encoder, shared_pos=False), as in models_t5_umt5-xxl-enc-bf16.pth.
WAN_T5_NAMES = {"token_embedding.weight", "norm.weight", "blocks.0.norm1.weight", "blocks.0.attn.q.weight",
                "blocks.0.attn.k.weight", "blocks.0.attn.v.weight", "blocks.0.attn.o.weight", "blocks.0.norm2.weight",
                "blocks.0.ffn.gate.0.weight", "blocks.0.ffn.fc1.weight", "blocks.0.ffn.fc2.weight",
                "blocks.0.pos_embedding.embedding.weight", "blocks.1.pos_embedding.embedding.weight"}


@pytest.mark.parametrize("dtype, layout", [(torch.float32, "comfy"), (torch.float16, "comfy"), (torch.bfloat16, "wan")])
def test_umt5_single_file_with_tokenizer_from_a_pipeline(tmp_path, dtype, layout):
    """ComfyUI's umt5_xxl_* files (transformers' names) or Wan-AI's models_t5_umt5-xxl-enc-bf16.pth (Wan's
    names, a torch.save zip): no config; the tokenizer from a pipeline folder."""
    from nodes.wan.checkpoints.original_format import wan_t5_key
    from graphrt import Executor, GraphBuilder
    from graphrt.registry import load_node_packs
    from tests.wan.reference import build_tiny_wan_pipeline
    load_node_packs()
    pipe = build_tiny_wan_pipeline(tmp_path / "pipe")
    enc = pipe.text_encoder.eval()
    path = tmp_path / "files" / "umt5_tiny.safetensors"
    path.parent.mkdir()
    with torch.no_grad():
        for p in enc.parameters():   # the reference runs on the values the file holds
            p.copy_(p.to(dtype).float())
    sd = {k: v.to(dtype).contiguous() for k, v in enc.state_dict().items() if k != "encoder.embed_tokens.weight"}
    if layout == "wan":
        sd = {wan_t5_key(k): v for k, v in sd.items()}
        assert set(sd) == WAN_T5_NAMES | {k.replace("blocks.0.", f"blocks.{i}.") for k in WAN_T5_NAMES
                                          for i in range(enc.config.num_layers) if k.startswith("blocks.0.")}
        path = path.with_name("models_t5_umt5-xxl-enc-bf16.pth")
        torch.save(sd, path)
    else:
        torch_save_file(sd, str(path))
    runs = {}
    for offload in ("none", "blocks"):     # resident, and streamed from the file (blocks and embedding rows)
        g = GraphBuilder()
        te = g.node("WanTextEncoderLoader", id="te", source=str(path), tokenizer_source=str(tmp_path / "pipe"),
                    offload=offload)
        g.node("WanTextEncode", id="enc", text_encoder=te[0], text="a red fox")
        out = Executor(output_dir=tmp_path).run(g.to_workflow(), targets=["enc", "te"]).outputs
        assert out["te"]["text_encoder"].encoder.offload == offload
        runs[offload] = next(iter(out["enc"].values())).embeds.asnumpy()
    ours = runs["none"]
    assert np.array_equal(runs["blocks"].view(np.uint32), ours.view(np.uint32))
    ids = pipe.tokenizer(["a red fox"], padding="max_length", max_length=512, truncation=True,
                         add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(ids.input_ids, ids.attention_mask).last_hidden_state.numpy()
    ref = ref * ids.attention_mask.numpy()[:, :, None]    # the pipelines zero the rows past the prompt
    assert rel_err(ours, ref) < 1e-4


def test_original_key_names_are_the_released_ones():
    """The names Wan-AI's and ComfyUI's files use (pinned by hand: diffusers' converter matches
    substrings, so a round trip through it alone would not catch a half-renamed key)."""
    ref = _reference("flf2v")
    keys = {original_key(k) for k in ref.state_dict()}
    block0 = {k for k in keys if k.startswith("blocks.0.")}
    expect0 = {f"blocks.0.{m}.{p}" for m in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                                            "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                                            "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2", "norm3")
               for p in ("weight", "bias")}
    expect0 |= {"blocks.0.modulation", "blocks.0.self_attn.norm_q.weight", "blocks.0.self_attn.norm_k.weight",
                "blocks.0.cross_attn.norm_q.weight", "blocks.0.cross_attn.norm_k.weight",
                "blocks.0.cross_attn.norm_k_img.weight"}
    assert block0 == expect0
    top = {k for k in keys if not k.startswith("blocks.")}
    assert top == {"patch_embedding.weight", "patch_embedding.bias", "head.modulation", "head.head.weight",
                   "head.head.bias", "time_embedding.0.weight", "time_embedding.0.bias", "time_embedding.2.weight",
                   "time_embedding.2.bias", "time_projection.1.weight", "time_projection.1.bias",
                   "text_embedding.0.weight", "text_embedding.0.bias", "text_embedding.2.weight",
                   "text_embedding.2.bias", "img_emb.proj.0.weight", "img_emb.proj.0.bias", "img_emb.proj.1.weight",
                   "img_emb.proj.1.bias", "img_emb.proj.3.weight", "img_emb.proj.3.bias", "img_emb.proj.4.weight",
                   "img_emb.proj.4.bias", "img_emb.emb_pos"}


VAE22_CONFIG = dict(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=2, attn_scales=[],
                    temperal_downsample=[True, False], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                    is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=8)

# Names from Wan2.2's vae2_2.py module tree (Down_ResidualBlock / Up_ResidualBlock hold their residual
# blocks and resample in one Sequential), pinned so that a key map that merely inverts itself cannot pass.
VAE22_ORIGINAL_KEYS = [
    "encoder.conv1.weight", "conv1.weight", "conv2.bias",
    "encoder.downsamples.0.downsamples.0.residual.0.gamma", "encoder.downsamples.1.downsamples.0.shortcut.weight",
    "encoder.downsamples.0.downsamples.1.residual.6.weight", "encoder.downsamples.0.downsamples.2.resample.1.weight",
    "encoder.downsamples.0.downsamples.2.time_conv.weight", "encoder.downsamples.1.downsamples.2.resample.1.bias",
    "encoder.middle.1.to_qkv.weight", "encoder.head.0.gamma", "encoder.head.2.weight",
    "decoder.conv1.weight", "decoder.middle.2.residual.3.gamma", "decoder.upsamples.0.upsamples.2.residual.2.weight",
    "decoder.upsamples.0.upsamples.3.resample.1.weight", "decoder.upsamples.1.upsamples.3.time_conv.weight",
    "decoder.upsamples.2.upsamples.0.shortcut.weight", "decoder.upsamples.2.upsamples.2.residual.6.bias",
    "decoder.head.0.gamma", "decoder.head.2.weight",
]


def test_wan22_vae_single_file_matches_diffusers(tmp_path):
    from diffusers import AutoencoderKLWan
    from nodes.wan import load_vae
    from nodes.wan.checkpoints.original_format import vae_key_map
    torch.manual_seed(0)
    ref = AutoencoderKLWan(**VAE22_CONFIG).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    key = vae_key_map(VAE22_CONFIG["num_res_blocks"], residual=True)
    sd = {key(k): v.contiguous() for k, v in ref.state_dict().items()}
    assert len(set(sd)) == len(sd) == len(ref.state_dict())
    missing = [k for k in VAE22_ORIGINAL_KEYS if k not in sd]
    assert not missing, f"not the original Wan2.2 VAE names: {missing}"
    assert not [k for k in sd if "down_blocks" in k or "up_blocks" in k or "resnets" in k]
    path = tmp_path / "wan2.2_vae.safetensors"
    torch_save_file(sd, str(path))

    ours = load_vae(path, config={**LATENT_STATS, "patch_size": 2})   # the rest inferred from the tensors
    for k in ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample",
              "is_residual", "in_channels", "out_channels", "patch_size", "scale_factor_spatial"):
        assert list(np.atleast_1d(ours.config[k])) == list(np.atleast_1d(VAE22_CONFIG[k])), k
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 4, 2, 4, 6)).astype(np.float32)
    video = rng.uniform(-1, 1, (1, 3, 5, 32, 48)).astype(np.float32)
    with torch.no_grad():
        r = ref.decode(torch.from_numpy(z)).sample.numpy()
        m = ref.encode(torch.from_numpy(video)).latent_dist.mean.numpy()
    assert rel_err(ours.decode(ms.Tensor(z)).asnumpy(), r) < 1e-4
    assert rel_err(ours.encode(ms.Tensor(video)).mean.asnumpy(), m) < 1e-4


def test_wan22_vae_config_is_inferred_for_the_released_shapes():
    """The released file's sizes (base 160, decoder 256, z 48, 12 patchified channels) give the TI2V-5B config."""
    from nodes.wan.checkpoints.presets import WAN22_LATENTS_MEAN
    from nodes.wan.checkpoints.original_format import infer_vae_config

    class Shapes:
        def __init__(self):
            self.s = {"encoder.conv1.weight": (160, 12, 3, 3, 3), "conv2.weight": (48, 48, 1, 1, 1),
                      "decoder.conv1.weight": (1024, 48, 3, 3, 3), "decoder.head.2.weight": (12, 256, 3, 3, 3)}
            for lvl, mult in enumerate([1, 2, 4, 4]):
                for j in range(2):
                    self.s[f"encoder.downsamples.{lvl}.downsamples.{j}.residual.0.gamma"] = (160 * mult, 1, 1, 1)
                    self.s[f"encoder.downsamples.{lvl}.downsamples.{j}.residual.2.weight"] = (160 * mult,)
                if lvl < 3:
                    self.s[f"encoder.downsamples.{lvl}.downsamples.2.resample.1.weight"] = (1,)
                    if lvl > 0:
                        self.s[f"encoder.downsamples.{lvl}.downsamples.2.time_conv.weight"] = (1,)

        def keys(self):
            return self.s.keys()

        def shape(self, k):
            return self.s[k]

    cfg = infer_vae_config(Shapes())
    assert (cfg["base_dim"], cfg["decoder_base_dim"], cfg["z_dim"], cfg["patch_size"]) == (160, 256, 48, 2)
    assert cfg["dim_mult"] == [1, 2, 4, 4] and cfg["temperal_downsample"] == [False, True, True]
    assert cfg["scale_factor_spatial"] == 16 and cfg["latents_mean"] == WAN22_LATENTS_MEAN
