"""AutoencoderKLWan (Wan2.1 and Wan2.2 VAEs) against diffusers, plus the conv entry point.

Tiny random configs (weights perturbed so no layer is trivial) are saved with
`save_pretrained` and loaded through `nodes.wan.load_vae`. Inputs are identical
numpy arrays; everything runs in fp32.
Tolerances (rel_err = max|a-b| / max|b|): encode mean/logvar 2e-5, decode 2e-5
(achieved ~1e-6 / ~4e-6), conv.py vs torch 1e-5 relative, normalisation exact
to 1 ulp-level (1e-6). Budget: < 60 s.
"""
import numpy as np
import pytest

import mindspore as ms
import torch

from nodes.wan import load_vae
from nodes.wan.backend import conv as conv_mod
from tests.wan.parity import rel_err

TOL = 2e-5

WAN21 = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
             latents_mean=[0.1, -0.2, 0.3, 0.05], latents_std=[1.5, 0.7, 2.0, 1.1])
WAN22 = dict(base_dim=8, decoder_base_dim=12, z_dim=6, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
             temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
             patch_size=2, scale_factor_spatial=16, latents_mean=[0.2, -0.1, 0.0, 0.3, -0.4, 0.1],
             latents_std=[0.5, 1.2, 0.8, 1.0, 0.6, 1.7])
SIZES = {"2.1": (24, 40), "2.2": (32, 64)}


def _build(config, tmp_path_factory, name):
    from diffusers import AutoencoderKLWan as TorchVAE
    torch.manual_seed(0)
    ref = TorchVAE(**config).eval()
    with torch.no_grad():
        for p in ref.parameters():  # RMS gammas start at 1 and biases at 0: make every weight matter
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp(name)
    ref.save_pretrained(folder)
    return ref, load_vae(folder, subfolder=None)


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def pair(request, tmp_path_factory):
    cfg = WAN21 if request.param == "2.1" else WAN22
    ref, ours = _build(cfg, tmp_path_factory, "vae" + request.param.replace(".", ""))
    return request.param, ref, ours


def _video(rng, frames, h, w):
    return rng.uniform(-1, 1, (1, 3, frames, h, w)).astype(np.float32)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers(pair, frames):
    version, ref, vae = pair
    x = _video(np.random.default_rng(frames), frames, *SIZES[version])
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
    post = vae.encode(ms.Tensor(x))
    assert post.mean.shape == tuple(dist.mean.shape)
    assert post.mean.shape[2] == (frames - 1) // 4 + 1
    assert rel_err(post.mean.asnumpy(), dist.mean.numpy()) < TOL
    assert rel_err(post.logvar.asnumpy(), dist.logvar.numpy()) < TOL
    assert rel_err(post.latent_dist.mode().asnumpy(), dist.mode().numpy()) < TOL
    noise = np.random.default_rng(1).standard_normal(dist.mean.shape).astype(np.float32)
    expect = (dist.mean + dist.std * torch.from_numpy(noise)).numpy()
    assert rel_err(post.sample(noise).asnumpy(), expect) < TOL


@pytest.mark.parametrize("latent_frames", [1, 2, 3])
def test_decode_matches_diffusers(pair, latent_frames):
    version, ref, vae = pair
    h, w = SIZES[version]
    s = vae.spatial_compression
    z = np.random.default_rng(latent_frames).standard_normal(
        (1, vae.z_dim, latent_frames, h // s, w // s)).astype(np.float32)
    with torch.no_grad():
        expect = ref.decode(torch.from_numpy(z)).sample.numpy()
    out = vae.decode(ms.Tensor(z)).asnumpy()
    assert out.shape == expect.shape == (1, 3, 1 + 4 * (latent_frames - 1), h, w)
    assert rel_err(out, expect) < TOL
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_properties_and_config(pair):
    version, ref, vae = pair
    assert vae.z_dim == ref.config.z_dim
    assert vae.spatial_compression == ref.config.scale_factor_spatial
    assert vae.temporal_compression == 4
    torch_keys = set(ref.state_dict())
    ours = {n for n, _ in vae.parameters_and_names()}
    assert ours == torch_keys


# Small tiles so that tiling triggers on small inputs (pixel units, as in diffusers).
TILES = {"2.1": dict(tile_sample_min_height=32, tile_sample_min_width=32,
                     tile_sample_stride_height=16, tile_sample_stride_width=24),
         "2.2": dict(tile_sample_min_height=48, tile_sample_min_width=48,
                     tile_sample_stride_height=32, tile_sample_stride_width=32)}
TILED_SIZES = {"2.1": (48, 64), "2.2": (64, 96)}


def test_tiled_matches_diffusers_tiled(pair):
    version, ref, vae = pair
    h, w = TILED_SIZES[version]
    rng = np.random.default_rng(7)
    x = _video(rng, 5, h, w)
    s = vae.spatial_compression
    z = rng.standard_normal((1, vae.z_dim, 2, h // s, w // s)).astype(np.float32)
    ref.enable_tiling(**TILES[version])
    try:
        with torch.no_grad():
            enc_ref = ref.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
            dec_ref = ref.decode(torch.from_numpy(z)).sample.numpy()
        ref.disable_tiling()
        with torch.no_grad():
            enc_plain = ref.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
            dec_plain = ref.decode(torch.from_numpy(z)).sample.numpy()
    finally:
        ref.disable_tiling()
    assert rel_err(enc_ref, enc_plain) > 1e-3, "tiling did not trigger in the reference"

    vae.enable_tiling(**TILES[version])
    try:
        enc = vae.encode(ms.Tensor(x)).mean.asnumpy()
        dec = vae.decode(ms.Tensor(z)).asnumpy()
    finally:
        vae.disable_tiling()
    assert rel_err(enc, enc_ref) < TOL
    assert rel_err(dec, dec_ref) < TOL
    # The per-call switch gives the same result as enable_tiling().
    vae.tile_sample_min_height = TILES[version]["tile_sample_min_height"]
    vae.tile_sample_min_width = TILES[version]["tile_sample_min_width"]
    vae.tile_sample_stride_height = TILES[version]["tile_sample_stride_height"]
    vae.tile_sample_stride_width = TILES[version]["tile_sample_stride_width"]
    try:
        assert rel_err(vae.decode(ms.Tensor(z), tiled=True).asnumpy(), dec_ref) < TOL
    finally:
        vae.tile_sample_min_height = vae.tile_sample_min_width = 256
        vae.tile_sample_stride_height = vae.tile_sample_stride_width = 192
    # Tiled and untiled agree roughly (seams are blended, not exact: random tiny nets have wide receptive fields).
    assert dec.shape == dec_plain.shape and enc.shape == enc_plain.shape
    for a, b in ((dec, dec_plain), (enc, enc_plain)):
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        print(version, "tiled vs untiled correlation", corr, "rel", rel_err(a, b))
        assert corr > 0.3
    # No tiling below the tile size: identical to the untiled path.
    small = _video(rng, 1, *SIZES[version])
    a = vae.encode(ms.Tensor(small), tiled=True).mean.asnumpy()
    b = vae.encode(ms.Tensor(small)).mean.asnumpy()
    np.testing.assert_array_equal(a, b)


def test_normalize_round_trip(pair):
    version, ref, vae = pair
    z = np.random.default_rng(3).standard_normal((1, vae.z_dim, 2, 3, 4)).astype(np.float32)
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1).to(torch.float32)
    inv = 1.0 / torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1).to(torch.float32)
    zt = torch.from_numpy(z)
    norm_ref = ((zt - mean) * inv).numpy()
    denorm_ref = (zt / inv + mean).numpy()
    norm = vae.normalize_latents(ms.Tensor(z)).asnumpy()
    denorm = vae.denormalize_latents(ms.Tensor(z)).asnumpy()
    assert rel_err(norm, norm_ref) < 1e-6
    assert rel_err(denorm, denorm_ref) < 1e-6
    back = vae.denormalize_latents(vae.normalize_latents(ms.Tensor(z))).asnumpy()
    assert rel_err(back, z) < 1e-6


CONV_CASES = [
    ((1, 5, 4, 9, 11), (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((2, 4, 5, 8, 10), (3, 1, 1), (2, 1, 1), (0, 0, 0)),
    ((1, 3, 3, 7, 6), (1, 1, 1), (1, 1, 1), (0, 0, 0)),
    ((1, 6, 3, 9, 9), (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ((1, 6, 5, 9, 8), (3, 3, 3), (2, 1, 1), (0, 1, 1)),
    ((2, 6, 3, 9, 8), (3, 3, 3), (1, 1, 1), (1, 0, 2)),
]


@pytest.fixture(params=["onednn", "native", "im2col", "tapsum"])
def cpu_conv(request, monkeypatch):
    """Every CPU strategy, whichever one the probe and the output width would pick."""
    monkeypatch.setattr(conv_mod, "_strategy", "native" if request.param == "tapsum" else request.param)
    monkeypatch.setattr(conv_mod, "TAP_SUM_MAX_OUT", 1 << 20 if request.param == "tapsum" else 0)
    monkeypatch.setattr(conv_mod, "TAP_SUM_MIN_ELEMENTS", 0)
    return request.param


def _check_conv3d(shape, kernel, stride, padding, against_mindspore=True):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((7, shape[1]) + kernel, dtype=np.float32)
    b = rng.standard_normal(7, dtype=np.float32)
    expect = torch.nn.functional.conv3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                        stride, padding).numpy()
    out = conv_mod.conv3d(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b), stride, padding).asnumpy()
    assert rel_err(out, expect) < 1e-5
    if against_mindspore:
        native = ms.ops.conv3d(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b), stride=stride, pad_mode="pad",
                               padding=padding).asnumpy()
        assert rel_err(out, native) < 1e-5


@pytest.mark.parametrize("shape,kernel,stride,padding", CONV_CASES)
def test_conv3d_cpu_paths(shape, kernel, stride, padding, cpu_conv):
    """Every CPU path (oneDNN blocked, frame-folded conv2d, im2col, tap-sum) equals torch and MindSpore's Conv3D."""
    _check_conv3d(shape, kernel, stride, padding)


@pytest.mark.parametrize("strategy", ["native", "im2col"])
@pytest.mark.parametrize("shape,kernel,stride,padding", CONV_CASES)
def test_conv3d_tiny_budgets(shape, kernel, stride, padding, strategy, monkeypatch):
    """im2col slabbed down to a 1000-byte column budget, and the native path's stacked frame windows split one by one."""
    monkeypatch.setattr(conv_mod, "_strategy", strategy)
    monkeypatch.setattr(conv_mod, "TAP_SUM_MAX_OUT", 0)
    monkeypatch.setattr(conv_mod, "WINDOW_BUDGET_BYTES", 1000)
    monkeypatch.setattr(conv_mod, "COL_BUDGET_BYTES", 1000)
    _check_conv3d(shape, kernel, stride, padding, against_mindspore=False)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, 0)])
def test_conv2d_im2col(stride, padding, cpu_conv):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 9, 10), dtype=np.float32)
    w = rng.standard_normal((4, 5, 3, 3), dtype=np.float32)
    b = rng.standard_normal(4, dtype=np.float32)
    expect = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                        stride, padding).numpy()
    out = conv_mod.conv2d(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b), stride, padding).asnumpy()
    assert rel_err(out, expect) < 1e-5


@pytest.mark.parametrize("budget", [256 << 20, 2000])
def test_conv3d_compiled_slabs(budget, monkeypatch):
    """The compiled (ms.jit) slab path used for large convs, incl. equal-size slabs with overlap."""
    shape, kernel, stride, padding = (1, 5, 4, 9, 11), (3, 3, 3), (1, 1, 1), (1, 1, 1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((7, shape[1]) + kernel, dtype=np.float32)
    expect = torch.nn.functional.conv3d(torch.from_numpy(x), torch.from_numpy(w), None, stride, padding).numpy()
    monkeypatch.setattr(conv_mod, "COL_BUDGET_BYTES", budget)
    monkeypatch.setattr(conv_mod, "JIT_MIN_FLOPS", 0)
    monkeypatch.setattr(conv_mod, "_strategy", "im2col")
    monkeypatch.setattr(conv_mod, "TAP_SUM_MAX_OUT", 0)
    out = conv_mod.conv3d(ms.Tensor(x), ms.Tensor(w), None, stride, padding).asnumpy()
    assert rel_err(out, expect) < 1e-5


@pytest.mark.parametrize("five_d", [False, True])
def test_upsample_conv2d(five_d, cpu_conv):
    """Nearest ×2 + 3×3 conv through the four merged parity kernels equals torch's interpolate + conv2d."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 3, 6, 7) if five_d else (2, 5, 6, 7), dtype=np.float32)
    w = rng.standard_normal((4, 5, 3, 3), dtype=np.float32)
    b = rng.standard_normal(4, dtype=np.float32)
    xt = torch.from_numpy(x)
    if five_d:
        xt = xt.permute(0, 2, 1, 3, 4).reshape(-1, 5, 6, 7)
    up = torch.nn.functional.interpolate(xt, scale_factor=2.0, mode="nearest")
    expect = torch.nn.functional.conv2d(up, torch.from_numpy(w), torch.from_numpy(b), padding=1)
    if five_d:
        expect = expect.reshape(2, 3, 4, 12, 14).permute(0, 2, 1, 3, 4)
    out = conv_mod.upsample_conv2d(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b)).asnumpy()
    assert out.shape == tuple(expect.shape)
    assert rel_err(out, expect.numpy()) < 1e-5


@pytest.mark.parametrize("cached", [0, 1, 2])
def test_conv3d_prefix_and_padding_pairs(cached, cpu_conv):
    """conv3d(x, prefix=cache, padding=((front, 0), 1, 1)): a causal conv's cache and front padding, on every CPU path."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 6, 3, 7, 8), dtype=np.float32)
    cache = rng.standard_normal((1, 6, cached, 7, 8), dtype=np.float32)
    w = rng.standard_normal((7, 6, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(7, dtype=np.float32)
    front = 2 - cached
    full = torch.nn.functional.pad(torch.from_numpy(np.concatenate([cache, x], 2)), (0, 0, 0, 0, front, 0))
    expect = torch.nn.functional.conv3d(full, torch.from_numpy(w), torch.from_numpy(b), 1, (0, 1, 1)).numpy()
    out = conv_mod.conv3d(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b), 1, ((front, 0), 1, 1),
                          prefix=ms.Tensor(cache) if cached else None).asnumpy()
    assert rel_err(out, expect) < 1e-5
