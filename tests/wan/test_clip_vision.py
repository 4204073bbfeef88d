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
