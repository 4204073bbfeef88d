"""CLIP vision tower and image preprocessing against transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from nodes.wan import load_image_encoder, load_image_processor
from tests.wan.parity import rel_err

TOL = 1e-5


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           patch_size=4, image_size=16, projection_dim=8, hidden_act="gelu")
    ref = CLIPVisionModelWithProjection(cfg).eval()
    ref.save_pretrained(folder)
    return ref, load_image_encoder(folder, subfolder=None)


def test_penultimate_hidden_states_match(clip):
    ref, ours = clip
    pixels = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-2].numpy()
    got = ours(pixels).asnumpy()
    assert got.shape == want.shape == (2, 17, 32)
    assert rel_err(got, want) < TOL


def test_quick_gelu_config(tmp_path):
    torch.manual_seed(1)
    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=4, image_size=8, hidden_act="quick_gelu")
    from transformers import CLIPVisionModel as Ref
    ref = Ref(cfg).eval()
    ref.save_pretrained(tmp_path)
    ours = load_image_encoder(tmp_path, subfolder=None)
    pixels = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-2].numpy()
    assert rel_err(ours(pixels).asnumpy(), want) < TOL


@pytest.mark.parametrize("size", [(300, 200), (180, 420), (224, 224), (500, 260)])
def test_image_processor_matches_transformers(tmp_path, size):
    from transformers import CLIPImageProcessor as RefProc
    ref = RefProc(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                  resample=3, image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    ref.save_pretrained(tmp_path)
    ours = load_image_processor(tmp_path, subfolder=None)
    img = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    want = ref(images=[img], return_tensors="np")["pixel_values"]
    got = ours([img])
    assert got.shape == want.shape == (1, 3, 224, 224)
    assert np.abs(got - want).max() < 1e-5


# Wan2.1's wan/modules/clip.py names (XLMRobertaCLIP.visual), as in models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth.
WAN_CLIP_NAMES = {"visual.patch_embedding.weight", "visual.cls_embedding", "visual.pos_embedding", "visual.pre_norm.weight",
                  "visual.pre_norm.bias", "visual.post_norm.weight", "visual.post_norm.bias", "visual.head",
                  "visual.transformer.0.norm1.weight", "visual.transformer.0.attn.to_qkv.weight",
                  "visual.transformer.0.attn.to_qkv.bias", "visual.transformer.0.attn.proj.weight",
                  "visual.transformer.0.norm2.bias", "visual.transformer.0.mlp.0.weight", "visual.transformer.0.mlp.2.bias"}


def wan_clip_state_dict(ref):
    """transformers' CLIP vision weights under Wan's clip.py names, q/k/v fused, plus a text tower we skip."""
    sd = {k[len("vision_model."):]: v for k, v in ref.state_dict().items() if k.startswith("vision_model.")}
    emb = "embeddings."
    out = {"visual.patch_embedding.weight": sd[emb + "patch_embedding.weight"],
           "visual.cls_embedding": sd[emb + "class_embedding"].reshape(1, 1, -1),
           "visual.pos_embedding": sd[emb + "position_embedding.weight"].unsqueeze(0),
           "visual.head": torch.randn(ref.config.hidden_size, 8), "log_scale": torch.tensor(2.6),
           "textual.token_embedding.weight": torch.randn(10, 8)}
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for p in ("weight", "bias"):
            out[f"visual.{theirs}.{p}"] = sd[f"{ours}.{p}"]
    for i in range(ref.config.num_hidden_layers):
        layer = f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            out[f"visual.transformer.{i}.attn.to_qkv.{p}"] = torch.cat(
                [sd[f"{layer}self_attn.{x}_proj.{p}"] for x in "qkv"])
            for a, b in (("layer_norm1", "norm1"), ("self_attn.out_proj", "attn.proj"), ("layer_norm2", "norm2"),
                         ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
                out[f"visual.transformer.{i}.{b}.{p}"] = sd[f"{layer}{a}.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("layout", ["wan pth", "comfy safetensors"])
def test_single_file_clip_vision_matches_transformers(tmp_path, layout):
    """Wan-AI's open-clip .pth (fused q/k/v, Wan's names, with a text tower) or ComfyUI's clip_vision_h
    .safetensors (transformers' names): config read off the shapes, penultimate states as transformers."""
    from safetensors.torch import save_file
    torch.manual_seed(2)
    cfg = CLIPVisionConfig(hidden_size=128, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2,
                           patch_size=4, image_size=12, projection_dim=8, hidden_act="gelu")
    ref = CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)   # LayerNorm weights away from 1, biases away from 0
    if layout == "wan pth":
        sd = wan_clip_state_dict(ref)
        assert WAN_CLIP_NAMES <= set(sd)
        path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "clip_vision_h.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    # a 128-wide tower is no released size: its head count and activation come through config=
    config = {"num_attention_heads": 2, "hidden_act": "gelu"}
    ours = load_image_encoder(path, config=config)
    assert {k: ours.cfg[k] for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                                     "patch_size", "image_size")} == dict(
        hidden_size=128, num_attention_heads=2, num_hidden_layers=3, intermediate_size=96, patch_size=4, image_size=12)
    pixels = np.random.default_rng(3).standard_normal((1, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-2].numpy()
    assert rel_err(ours(pixels).asnumpy(), want) < TOL

    # What WanCLIPVisionLoader does with a file: the tower plus the diffusers repos' preprocessing at its size.
    from transformers import CLIPImageProcessor as RefProc
    from nodes.wan import load_clip_vision
    image = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    proc = RefProc(size={"shortest_edge": 12}, crop_size={"height": 12, "width": 12}, do_center_crop=True, resample=3,
                   image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    with torch.no_grad():
        want = ref(pixel_values=proc(images=[image], return_tensors="pt")["pixel_values"],
                   output_hidden_states=True).hidden_states[-2].numpy()
    got = load_clip_vision(str(path), config=config).encode(image.astype(np.float32) / 255).asnumpy()
    assert rel_err(got, want) < 1e-4


def test_single_file_of_another_kind_is_refused(tmp_path):
    from nodes.wan.checkpoints.safetensors_io import CheckpointError
    path = tmp_path / "not_clip.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a CLIP vision tower"):
        load_image_encoder(path)
