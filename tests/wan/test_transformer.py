"""WanTransformer3DModel parity with diffusers on tiny random configs (fp32)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel as RefTransformer

import mindspore as ms

from nodes.wan import load_transformer
from nodes.wan.checkpoints.safetensors_io import CheckpointError
from tests.wan.parity import rel_err

TOL = 1e-5   # relative; measured <= 2e-6 everywhere (MindSpore CPU exp/sigmoid are approximate)
BASE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
CONFIGS = {
    "t2v": BASE,
    "i2v": {**BASE, "in_channels": 36, "image_dim": 24, "added_kv_proj_dim": 24},
    "flf2v": {**BASE, "in_channels": 36, "image_dim": 24, "added_kv_proj_dim": 24, "pos_embed_seq_len": 10},
    "ti2v": {**BASE, "in_channels": 48, "out_channels": 48},
}


def build(config, folder, seed=0, dtype=torch.float32, **save_kw):
    torch.manual_seed(seed)
    ref = RefTransformer(**config).eval()
    with torch.no_grad():  # diffusers zero-inits some tensors; perturb every one so all paths matter
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if dtype != torch.float32:  # the reference computes in fp32 on the rounded weights
            for p in ref.parameters():
                p.copy_(p.to(dtype).float())
    import copy
    copy.deepcopy(ref).to(dtype).save_pretrained(folder, **save_kw)
    return ref


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name, cfg in CONFIGS.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = (build(cfg, folder), load_transformer(folder, subfolder=None), folder)
    return out


def run_both(ref, ours, x, t, ctx, img=None):
    with torch.no_grad():
        r = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                None if img is None else torch.from_numpy(img), return_dict=False)[0].numpy()
    o = ours(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), None if img is None else ms.Tensor(img)).asnumpy()
    return o, r


def inputs(cfg, b=2, f=3, h=4, w=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, cfg["in_channels"], f, h, w)).astype(np.float32)
    ctx = rng.standard_normal((b, 512, cfg["text_dim"])).astype(np.float32)
    return x, ctx, rng


@pytest.mark.parametrize("shape", [(1, 4, 6), (3, 4, 6), (5, 6, 4), (2, 8, 2)])
def test_t2v_matches_diffusers(models, shape):
    ref, ours, _ = models["t2v"]
    x, ctx, _ = inputs(CONFIGS["t2v"], 2, *shape)
    o, r = run_both(ref, ours, x, np.array([999, 421], np.int64), ctx)
    assert o.shape == r.shape and rel_err(o, r) < TOL


def test_float_timesteps(models):
    ref, ours, _ = models["t2v"]
    x, ctx, _ = inputs(CONFIGS["t2v"])
    o, r = run_both(ref, ours, x, np.array([987.654, 3.25], np.float32), ctx)
    assert rel_err(o, r) < TOL


def test_i2v_image_branch(models):
    ref, ours, _ = models["i2v"]
    x, ctx, rng = inputs(CONFIGS["i2v"])
    img = rng.standard_normal((2, 7, 24)).astype(np.float32)
    o, r = run_both(ref, ours, x, np.array([800, 200], np.int64), ctx, img)
    assert rel_err(o, r) < TOL


def test_flf2v_pos_embed(models):
    ref, ours, _ = models["flf2v"]
    x, ctx, rng = inputs(CONFIGS["flf2v"])
    img = rng.standard_normal((4, 5, 24)).astype(np.float32)   # first+last frame tokens per sample
    o, r = run_both(ref, ours, x, np.array([800, 200], np.int64), ctx, img)
    assert rel_err(o, r) < TOL


def test_ti2v_per_token_timesteps(models):
    ref, ours, _ = models["ti2v"]
    x, ctx, _ = inputs(CONFIGS["ti2v"])
    tokens = 3 * 2 * 3
    t = np.full((2, tokens), 640.0, np.float32)
    t[:, :6] = 0.0      # first-frame tokens at timestep 0, as the TI2V image-to-video pipeline does
    t[1] *= 0.5
    o, r = run_both(ref, ours, x, t, ctx)
    assert rel_err(o, r) < TOL


@pytest.mark.parametrize("matmul", ["whole graph", "ffn in onednn", "ffn row chunks", "native"])
@pytest.mark.parametrize("name", ["t2v", "i2v", "ti2v"])
def test_jit_equals_eager(models, name, matmul, monkeypatch):
    """Compiled blocks equal eager: one graph per block, or on CPU from CPU_FFN_OFFLOAD_MIN_ROWS token rows
    the graph up to the FFN and the FFN in oneDNN (in chunks of FEED_FORWARD_ROWS rows); the text
    projection in oneDNN too, unless GRAPHRT_CPU_MATMUL=native."""
    from nodes.wan.backend import onednn
    from nodes.wan.models import transformer as transformer_mod
    if matmul != "native" and not onednn.available():
        pytest.skip(f"MindSpore's oneDNN: {onednn.unavailable_reason()}")
    monkeypatch.setenv("GRAPHRT_CPU_MATMUL", "native" if matmul == "native" else "onednn")
    offload = matmul.startswith("ffn")
    if offload:   # the toy inputs have 36 token rows
        monkeypatch.setattr(transformer_mod, "CPU_FFN_OFFLOAD_MIN_ROWS", 36)
    if matmul == "ffn row chunks":
        monkeypatch.setattr(onednn, "FEED_FORWARD_ROWS", 7)   # 5 chunks of 7 rows and one of 1
    calls = []
    real = onednn.feed_forward
    monkeypatch.setattr(onednn, "feed_forward", lambda *a: calls.append(1) or real(*a))
    ref, _, folder = models[name]
    model = load_transformer(folder, subfolder=None)   # a fresh copy: compile() changes the model
    cfg = CONFIGS[name]
    x, ctx, rng = inputs(cfg)
    t = np.array([999, 500], np.int64)
    img = rng.standard_normal((2, 7, 24)).astype(np.float32) if name == "i2v" else None
    if name == "ti2v":
        t = np.full((2, 18), 700.0, np.float32)
        t[:, :6] = 0.0
    args = (ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), None if img is None else ms.Tensor(img))
    eager = model(*args).asnumpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed compile falls back to eager with a warning
        jitted = model.compile()(*args).asnumpy()
        again = model(*args).asnumpy()  # the cached graph
    assert model._jit_blocks is not None
    # The text projection in each of the three forwards, and the FFN of each block in the two compiled ones.
    assert len(calls) == (0 if matmul == "native" else 3 + (2 * len(model.blocks) if offload else 0))
    assert np.abs(jitted - eager).max() <= 1e-5 * np.abs(eager).max()
    assert np.array_equal(jitted, again)
    _, r = run_both(ref, model, x, t, ctx, img)
    assert rel_err(jitted, r) < TOL


def test_sharded_bf16_checkpoint(tmp_path):
    ref = build(CONFIGS["t2v"], tmp_path, seed=3, dtype=torch.bfloat16, max_shard_size="20KB")
    shards = list(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    ours = load_transformer(tmp_path, subfolder=None, dtype="float32")
    x, ctx, _ = inputs(CONFIGS["t2v"])
    o, r = run_both(ref, ours, x, np.array([999, 421], np.int64), ctx)   # ref: fp32 on bf16-rounded weights
    assert rel_err(o, r) < TOL


def test_config_mismatch_names_key_and_shapes(tmp_path, models):
    _, _, folder = models["t2v"]
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["ffn_dim"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "diffusion_pytorch_model.safetensors").write_bytes((folder / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.net\.0\.proj\.(weight|bias)' has shape \((32|32, 24)\).*expects \(64"):
        load_transformer(bad, subfolder=None)


def test_truncated_checkpoint_is_a_clear_error(tmp_path, models):
    _, _, folder = models["t2v"]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    data = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_transformer(tmp_path, subfolder=None)


def test_unknown_qk_norm_is_rejected():
    from nodes.wan.models.transformer import WanTransformer3DModel
    with pytest.raises(ValueError, match="qk_norm"):
        WanTransformer3DModel.from_config({**BASE, "qk_norm": "layer_norm"})


def test_image_embeds_without_image_branch_is_an_error(models):
    _, ours, _ = models["t2v"]
    x, ctx, rng = inputs(CONFIGS["t2v"])
    with pytest.raises(ValueError, match="no image branch"):
        ours(ms.Tensor(x), ms.Tensor(np.array([1, 2])), ms.Tensor(ctx), ms.Tensor(np.zeros((2, 5, 24), np.float32)))


VACE = {**BASE, "num_layers": 3, "vace_layers": [0, 2], "vace_in_channels": 12}


@pytest.fixture(scope="module")
def vace(tmp_path_factory):
    from diffusers import WanVACETransformer3DModel
    folder = tmp_path_factory.mktemp("vace")
    torch.manual_seed(0)
    ref = WanVACETransformer3DModel(**VACE).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(folder)
    return ref, folder


@pytest.mark.parametrize("control_frames, scale", [(3, None), (2, [0.5, 1.5])])
def test_vace_matches_diffusers(vace, control_frames, scale):
    from nodes.wan.models.vace import WanVACETransformer3DModel
    ref, folder = vace
    ours = load_transformer(folder, subfolder=None)
    assert isinstance(ours, WanVACETransformer3DModel)
    x, ctx, rng = inputs(VACE)
    control = rng.standard_normal((2, 12, control_frames, 4, 6)).astype(np.float32)  # fewer frames: zero-padded
    t = np.array([900, 300], np.int64)
    with torch.no_grad():
        r = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                control_hidden_states=torch.from_numpy(control),
                control_hidden_states_scale=None if scale is None else torch.tensor(scale),
                return_dict=False)[0].numpy()
    args = (ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), None, ms.Tensor(control),
            None if scale is None else ms.Tensor(np.array(scale, np.float32)))
    o = ours(*args).asnumpy()
    assert rel_err(o, r) < TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        j = ours.compile()(*args).asnumpy()
    assert np.abs(j - o).max() <= 1e-5 * np.abs(o).max()


@pytest.mark.parametrize("name", ["t2v", "i2v", "ti2v"])
def test_tiled_broadcasts_match_diffusers(models, monkeypatch, name):
    """The CPU path at real sizes forced on at toy sizes: broadcast operands tiled, row statistics
    (LayerNorm, RMSNorm) as matmuls."""
    import nodes.wan.models.layers as layers
    monkeypatch.setattr(layers, "TILE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(layers, "TILE_BROADCASTS", True)
    ref, ours, _ = models[name]
    monkeypatch.setattr(ours, "_jit_blocks", None)   # eager: a compiled graph keeps the path it was traced with
    x, ctx, rng = inputs(CONFIGS[name])
    t = np.array([999, 421], np.int64)
    img = rng.standard_normal((2, 7, 24)).astype(np.float32) if name == "i2v" else None
    if name == "ti2v":
        t = np.full((2, 18), 640.0, np.float32)
        t[:, :6] = 0.0
    o, r = run_both(ref, ours, x, t, ctx, img)
    assert rel_err(o, r) < TOL


@pytest.mark.parametrize("a, b", [((2, 5, 7), (7,)), ((2, 5, 7), (2, 1, 7)), ((2, 5, 7), (2, 5, 1)),
                                  ((1, 5, 1), (3, 1, 4)), ((4,), (2, 3, 4))])
def test_bmul_badd_broadcast_like_numpy(monkeypatch, a, b):
    import nodes.wan.models.layers as layers
    monkeypatch.setattr(layers, "TILE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(layers, "TILE_BROADCASTS", True)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(a).astype(np.float32), rng.standard_normal(b).astype(np.float32)
    assert np.array_equal(layers.bmul(ms.Tensor(x), ms.Tensor(y)).asnumpy(), x * y)
    assert np.array_equal(layers.badd(ms.Tensor(x), ms.Tensor(y)).asnumpy(), x + y)


@pytest.mark.parametrize("by_matmul", [True, False])
@pytest.mark.parametrize("shape", [(7, 1536), (2, 5, 96), (1, 3, 4, 40)])
def test_row_statistics_match_torch(monkeypatch, by_matmul, shape):
    """`row_mean`, `rms_normalize` and `layer_norm` on both paths: CPU's matmul with a ones
    column, and the reduction / LayerNorm kernels other devices use."""
    import torch
    import nodes.wan.models.layers as layers
    import nodes.wan.backend.runtime as runtime
    monkeypatch.setattr(runtime, "ROW_STATS_BY_MATMUL", by_matmul)
    monkeypatch.setattr(layers, "TILE_MIN_ELEMENTS", 0)   # toy sizes take the path of real ones
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(np.float32)   # an offset mean tests the centring
    w, b = rng.standard_normal(shape[-1]).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    tx = torch.from_numpy(x)
    d = shape[-1]

    def close(ours, ref):
        ref = ref.numpy()
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 2e-6 * max(1.0, np.abs(ref).max())

    close(layers.row_mean(ms.Tensor(x)).asnumpy(), tx.mean(-1, keepdim=True))
    close(layers.rms_normalize(ms.Tensor(x), 1e-6).asnumpy(), tx * torch.rsqrt(tx.pow(2).mean(-1, keepdim=True) + 1e-6))
    close(layers.layer_norm(ms.Tensor(x), 1e-5).asnumpy(), torch.nn.functional.layer_norm(tx, (d,), eps=1e-5))
    close(layers.layer_norm(ms.Tensor(x), 1e-6, ms.Tensor(w), ms.Tensor(b)).asnumpy(),
          torch.nn.functional.layer_norm(tx, (d,), torch.from_numpy(w), torch.from_numpy(b), eps=1e-6))


@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_non_cpu_paths_match_diffusers(models, monkeypatch, name):
    """The transformer as other devices run it: ReduceMean / LayerNorm kernels and MindSpore's matmuls
    for the text projection. Eager: a compiled graph would keep the path it was traced with."""
    import nodes.wan.backend.runtime as runtime
    monkeypatch.setattr(runtime, "ROW_STATS_BY_MATMUL", False)
    monkeypatch.setenv("GRAPHRT_CPU_MATMUL", "native")
    ref, ours, _ = models[name]
    monkeypatch.setattr(ours, "_jit_blocks", None)
    x, ctx, rng = inputs(CONFIGS[name])
    t = np.array([999, 421], np.int64)
    img = rng.standard_normal((2, 7, 24)).astype(np.float32) if name == "i2v" else None
    o, r = run_both(ref, ours, x, t, ctx, img)
    assert rel_err(o, r) < TOL


@pytest.mark.parametrize("room", ["none", "plenty"])
@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_chunked_self_attention_between_two_graphs_equals_one_graph(models, name, room, monkeypatch):
    """A self-attention split into score chunks runs eagerly between two graphs when the budget has no room
    for one graph over all its chunks, else inside the block's graph: the same numbers either way, equal to
    diffusers."""
    from nodes.wan.backend import memory
    from nodes.wan.models import attention, transformer as transformer_mod
    from nodes.wan.models.transformer_block import AttentionOutsideGraph
    cfg = CONFIGS[name]
    x, ctx, rng = inputs(cfg, 2, 5, 4, 6)     # 30 tokens: a shape no other test compiles (a graph keeps its chunking)
    budget = 2 * 2 * 30 * 4 * 7               # 7 query rows of scores per chunk: 5 chunks
    monkeypatch.setattr(attention, "SCORE_BUDGET_BYTES", budget)
    monkeypatch.setattr(transformer_mod, "SCORE_BUDGET_BYTES", budget)
    monkeypatch.setattr(memory, "room", (lambda: 0) if room == "none" else (lambda: 1 << 40))
    img = rng.standard_normal((2, 7, 24)).astype(np.float32) if name == "i2v" else None
    t = np.array([999, 500], np.int64)
    ref, _, folder = models[name]
    model = load_transformer(folder, subfolder=None).compile()
    chosen = []
    real = type(model)._compiled_block_fn
    monkeypatch.setattr(type(model), "_compiled_block_fn", lambda self, b, x: chosen.append(real(self, b, x)) or chosen[-1])
    args = (ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), None if img is None else ms.Tensor(img))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a failed compile falls back to eager with a warning
        out = model(*args).asnumpy()
    split = [isinstance(fn, AttentionOutsideGraph) for fn in chosen]
    assert len(split) == len(model.blocks) and all(split) == (room == "none") and any(split) == (room == "none")
    monkeypatch.setattr(model, "_jit_blocks", None)
    eager = model(*args).asnumpy()
    assert np.abs(out - eager).max() <= 1e-5 * np.abs(eager).max()
    _, r = run_both(ref, model, x, t, ctx, img)
    assert rel_err(out, r) < TOL
