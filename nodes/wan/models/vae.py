"""AutoencoderKLWan on MindSpore: the Wan2.1 VAE (z 16) and the Wan2.2 VAE (z 48).

One config-driven model, parameter names equal to diffusers' checkpoint keys.
Video is encoded causally in chunks of 1, 4, 4, … frames and decoded one latent
frame at a time, with a feature cache carrying the last frames of every causal
convolution's input across chunks (wan_models.md §3.4) — results depend on the
exact chunking, so it is reproduced as diffusers does it.

    vae = load_vae(folder)                         # nodes.wan.load_vae
    posterior = vae.encode(video)                  # video [B,3,F,H,W] in [-1,1]
    z = vae.normalize_latents(posterior.mean)      # what the pipelines feed the transformer
    video = vae.decode(vae.denormalize_latents(z)) # [B,3,F,H,W], clamped to [-1,1]
    vae.enable_tiling(256, 256, 192, 192)          # or encode/decode(..., tiled=True)
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, mint, nn, ops

from .layers import param_init
from .attention import attention
from .residency import reserve_working
from ..backend.conv import conv2d, conv3d, upsample_conv2d
from ..backend.runtime import device, to_ms_dtype

CACHE_T = 2
_matmul = ops.MatMul()


# ----------------------------------------------------------------------------- primitives

class CausalConv3d(nn.Cell):
    """Conv3d with causal time padding: 2·pt zero frames in front (fewer when cached frames are given)."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, padding=0, dtype=ms.float32):
        super().__init__()
        kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.pad = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.weight = Parameter(param_init("zeros", (out_ch, in_ch) + kernel, dtype), name="weight")
        self.bias = Parameter(param_init("zeros", (out_ch,), dtype), name="bias")

    def construct(self, x, cache=None):
        front = 2 * self.pad[0]
        prefix = None
        if cache is not None and front > 0:
            prefix = cache.astype(x.dtype)
            front -= cache.shape[2]
        return conv3d(x, self.weight, self.bias, self.stride, ((max(front, 0), 0), self.pad[1], self.pad[2]),
                      prefix=prefix)


class Conv2d(nn.Cell):
    """A per-frame 2-D convolution (torch Conv2d weights) applied to [B,C,T,H,W] as a (1,k,k) Conv3d."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, padding=0, dtype=ms.float32):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = Parameter(param_init("zeros", (out_ch, in_ch, kernel, kernel), dtype), name="weight")
        self.bias = Parameter(param_init("zeros", (out_ch,), dtype), name="bias")

    def construct(self, x, padding=None):
        """`padding` overrides the layer's: an int or per-dim (before, after) pairs, e.g. ZeroPad2d((0, 1, 0, 1))."""
        pad = self.padding if padding is None else padding
        pad = (pad, pad) if isinstance(pad, int) else tuple(pad)
        if x.ndim == 4:
            return conv2d(x, self.weight, self.bias, self.stride, pad)
        return conv3d(x, self.weight[:, :, None], self.bias, (1, self.stride, self.stride), (0,) + pad)


class RMSNorm(nn.Cell):
    """diffusers WanRMS_norm: F.normalize over channels (‖x‖ clamped at 1e-12) · √C · γ; stats in fp32."""

    def __init__(self, dim, images=False, dtype=ms.float32):
        super().__init__()
        self.scale = dim ** 0.5
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.gamma = Parameter(param_init("ones", shape, dtype), name="gamma")

    def construct(self, x):
        xf = x.astype(ms.float32)
        if device() == "CPU":
            return _channel_normalize_cpu(xf, self.gamma.astype(ms.float32) * self.scale).astype(x.dtype)
        norm = mint.sqrt((xf * xf).sum(1, keepdim=True))
        y = (xf / mint.clamp(norm, min=1e-12)).astype(x.dtype)
        return y * self.scale * self.gamma


def _channel_normalize_cpu(x, gain):
    """x / max(‖x‖₂ over dim 1, 1e-12) · gain[c], with the reduction and both broadcasts as matmuls.

    MindSpore's CPU kernels are slow at broadcasting (x·[1,1,T,H,W] or x·[C,1,1,1]
    take ~6x a same-shape multiply) and at reducing dim 1; a ones-row matmul sums
    the squares, and the outer product gain ⊗ 1/‖x‖ (a K=1 matmul, exact) turns
    the scaling into one same-shape multiply: ~5x faster on decode-sized tensors.
    """
    b, c = x.shape[:2]
    # One sample: 2-D MatMul, ~25% faster in eager than the batched mint.matmul.
    flat, mm = (x.reshape(c, -1), _matmul) if b == 1 else (x.reshape(b, c, -1), mint.matmul)
    sumsq = mm(mint.ones((1, c), dtype=x.dtype), flat * flat)
    inv = mint.rsqrt(mint.clamp(sumsq, min=1e-24))  # = 1 / max(‖x‖, 1e-12)
    scale = mm(gain.reshape(c, 1), inv)
    return (flat * scale).reshape(x.shape)


class _NoParams(nn.Cell):
    """Placeholder keeping diffusers' Sequential indices (resample.0 = pad/upsample, resample.1 = conv)."""

    def construct(self, x):
        return x


class FeatCache:
    """The per-chunk feature cache: one slot per causal conv / 3-D resample, consumed in call order."""

    def __init__(self):
        self.feats = {}
        self.idx = 0

    def start_chunk(self):
        self.idx = 0

    def run(self, conv, x):
        """A cached causal conv: call with the previous chunk's frames, then store this chunk's last two."""
        i = self.idx
        prev = self.feats.get(i)
        new = x[:, :, -CACHE_T:]
        if new.shape[2] < 2 and prev is not None:
            new = mint.cat([prev[:, :, -1:], new], dim=2)
        out = conv(x, prev)
        self.feats[i] = new.contiguous()
        self.idx += 1
        return out


def _silu(x):
    return mint.nn.functional.silu(x)


# ----------------------------------------------------------------------------- blocks

class ResidualBlock(nn.Cell):
    def __init__(self, in_dim, out_dim, dtype):
        super().__init__()
        self.norm1 = RMSNorm(in_dim, dtype=dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, dtype=dtype)
        self.norm2 = RMSNorm(out_dim, dtype=dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, dtype=dtype)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1, dtype=dtype) if in_dim != out_dim else None

    def construct(self, x, cache):
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = cache.run(self.conv1, _silu(self.norm1(x)))
        # Dropout is identity at inference.
        x = cache.run(self.conv2, _silu(self.norm2(x)))
        return x + h


class AttentionBlock(nn.Cell):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim, dtype):
        super().__init__()
        self.norm = RMSNorm(dim, images=True, dtype=dtype)
        self.to_qkv = Conv2d(dim, dim * 3, 1, dtype=dtype)
        self.proj = Conv2d(dim, dim, 1, dtype=dtype)

    def construct(self, x, cache=None):
        identity = x
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(x))
        qkv = qkv.reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2)
        q, k, v = mint.chunk(qkv, 3, dim=-1)
        x = attention(q, k, v, scale=1.0 / math.sqrt(c))
        x = x.reshape(b * t, h * w, c).permute(0, 2, 1).reshape(b * t, c, h, w)
        x = self.proj(x)
        return x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4) + identity


class Resample(nn.Cell):
    """Spatial ×2 up/down sampling, with a causal time conv for the 3-D modes."""

    def __init__(self, dim, mode, upsample_out_dim=None, dtype=ms.float32):
        super().__init__()
        self.mode = mode
        if upsample_out_dim is None:
            upsample_out_dim = dim // 2
        self.time_conv = None
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.CellList([_NoParams(), Conv2d(dim, upsample_out_dim, 3, padding=1, dtype=dtype)])
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0), dtype=dtype)
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.CellList([_NoParams(), Conv2d(dim, dim, 3, stride=2, dtype=dtype)])
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), dtype=dtype)
        else:
            self.resample = None

    def _upsample3d_time(self, x, cache):
        b, c, t, h, w = x.shape
        i = cache.idx
        prev = cache.feats.get(i)
        cache.idx += 1
        if prev is None:
            # First chunk: one frame stays one frame.
            cache.feats[i] = "Rep"
            return x
        new = x[:, :, -CACHE_T:]
        if new.shape[2] < 2:
            head = mint.zeros(new.shape, dtype=new.dtype) if isinstance(prev, str) else prev[:, :, -1:]
            new = mint.cat([head, new], dim=2)
        x = self.time_conv(x) if isinstance(prev, str) else self.time_conv(x, prev)
        cache.feats[i] = new.contiguous()
        # (b, 2c, t) → frames interleaved: t0 half0, t0 half1, t1 half0, …
        x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5)
        return x.reshape(b, c, t * 2, h, w)

    def construct(self, x, cache):
        if self.mode == "upsample3d":
            x = self._upsample3d_time(x, cache)
        if self.mode in ("upsample2d", "upsample3d"):
            # Nearest ×2 then the 3×3 conv; on CPU folded into the conv's kernels (conv.upsample_conv2d).
            x = upsample_conv2d(x, self.resample[1].weight, self.resample[1].bias)
        elif self.mode in ("downsample2d", "downsample3d"):
            # ZeroPad2d((0, 1, 0, 1)): one zero row below, one zero column right, padded by the conv.
            x = self.resample[1](x, padding=((0, 1), (0, 1)))
        if self.mode == "downsample3d":
            i = cache.idx
            prev = cache.feats.get(i)
            cache.idx += 1
            if prev is None:
                cache.feats[i] = x
            else:
                new = x[:, :, -1:].contiguous()
                x = self.time_conv(mint.cat([prev[:, :, -1:], x], dim=2))
                cache.feats[i] = new
        return x


class AvgDown3D(nn.Cell):
    """Wan2.2 down-block shortcut: pixel-unshuffle (t,h,w) into channels and average groups."""

    def __init__(self, in_ch, out_ch, factor_t, factor_s=1):
        super().__init__()
        self.out_ch, self.ft, self.fs = out_ch, factor_t, factor_s
        self.factor = factor_t * factor_s * factor_s
        if in_ch * self.factor % out_ch:
            raise ValueError(f"in_channels {in_ch} × factor {self.factor} must be divisible by {out_ch}")
        self.group = in_ch * self.factor // out_ch

    def construct(self, x):
        ft, fs = self.ft, self.fs
        pad_t = (ft - x.shape[2] % ft) % ft
        if pad_t:
            b, c, _, h, w = x.shape
            x = mint.cat([mint.zeros((b, c, pad_t, h, w), dtype=x.dtype), x], dim=2)
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_ch, self.group, t // ft, h // fs, w // fs)
        return x.mean(2)


class DupUp3D(nn.Cell):
    """Wan2.2 up-block shortcut: repeat channels, pixel-shuffle back; first chunk drops ft−1 frames."""

    def __init__(self, in_ch, out_ch, factor_t, factor_s=1):
        super().__init__()
        self.out_ch, self.ft, self.fs = out_ch, factor_t, factor_s
        factor = factor_t * factor_s * factor_s
        if out_ch * factor % in_ch:
            raise ValueError(f"out_channels {out_ch} × factor {factor} must be divisible by {in_ch}")
        self.repeats = out_ch * factor // in_ch

    def construct(self, x, first_chunk=False):
        ft, fs = self.ft, self.fs
        b, c, t, h, w = x.shape
        # repeat_interleave along channels
        x = mint.broadcast_to(x[:, :, None], (b, c, self.repeats, t, h, w))
        x = x.reshape(b, self.out_ch, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_ch, t * ft, h * fs, w * fs)
        if first_chunk:
            x = x[:, :, ft - 1:]
        return x


class MidBlock(nn.Cell):
    def __init__(self, dim, dtype):
        super().__init__()
        self.resnets = nn.CellList([ResidualBlock(dim, dim, dtype), ResidualBlock(dim, dim, dtype)])
        self.attentions = nn.CellList([AttentionBlock(dim, dtype)])

    def construct(self, x, cache):
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class ResidualDownBlock(nn.Cell):
    def __init__(self, in_dim, out_dim, num_res_blocks, temporal, down, dtype):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        blocks = []
        for _ in range(num_res_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim, dtype))
            in_dim = out_dim
        self.resnets = nn.CellList(blocks)
        self.downsampler = (Resample(out_dim, "downsample3d" if temporal else "downsample2d", dtype=dtype)
                            if down else None)

    def construct(self, x, cache):
        skip = x
        for r in self.resnets:
            x = r(x, cache)
        if self.downsampler is not None:
            x = self.downsampler(x, cache)
        return x + self.avg_shortcut(skip)


class UpBlock(nn.Cell):
    """Wan2.1 decoder stage: resnets then an optional Resample (`upsamplers.0`)."""

    def __init__(self, in_dim, out_dim, num_res_blocks, mode, dtype):
        super().__init__()
        blocks = []
        for _ in range(num_res_blocks + 1):
            blocks.append(ResidualBlock(in_dim, out_dim, dtype))
            in_dim = out_dim
        self.resnets = nn.CellList(blocks)
        self.upsamplers = nn.CellList([Resample(out_dim, mode, dtype=dtype)]) if mode else None

    def construct(self, x, cache, first_chunk=False):
        for r in self.resnets:
            x = r(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class ResidualUpBlock(nn.Cell):
    """Wan2.2 decoder stage: resnets, Resample to the same width (`upsampler`), DupUp3D shortcut."""

    def __init__(self, in_dim, out_dim, num_res_blocks, temporal, up, dtype):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        blocks = []
        cur = in_dim
        for _ in range(num_res_blocks + 1):
            blocks.append(ResidualBlock(cur, out_dim, dtype))
            cur = out_dim
        self.resnets = nn.CellList(blocks)
        self.upsampler = (Resample(out_dim, "upsample3d" if temporal else "upsample2d", upsample_out_dim=out_dim,
                                   dtype=dtype) if up else None)

    def construct(self, x, cache, first_chunk=False):
        skip = x
        for r in self.resnets:
            x = r(x, cache)
        if self.upsampler is not None:
            x = self.upsampler(x, cache)
        if self.avg_shortcut is not None:
            x = x + self.avg_shortcut(skip, first_chunk)
        return x


class Encoder3d(nn.Cell):
    def __init__(self, in_channels, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_downsample,
                 is_residual, dtype):
        super().__init__()
        dims = [dim * u for u in [1] + list(dim_mult)]
        self.conv_in = CausalConv3d(in_channels, dims[0], 3, padding=1, dtype=dtype)
        blocks = []
        scale = 1.0
        last = len(dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if is_residual:
                blocks.append(ResidualDownBlock(in_dim, out_dim, num_res_blocks,
                                                temperal_downsample[i] if i != last else False, i != last, dtype))
                continue
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dtype))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim, dtype))
                in_dim = out_dim
            if i != last:
                blocks.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d",
                                       dtype=dtype))
                scale /= 2.0
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = MidBlock(out_dim, dtype)
        self.norm_out = RMSNorm(out_dim, dtype=dtype)
        self.conv_out = CausalConv3d(out_dim, z_dim, 3, padding=1, dtype=dtype)

    def construct(self, x, cache):
        x = cache.run(self.conv_in, x)
        for layer in self.down_blocks:
            x = layer(x, cache)
        x = self.mid_block(x, cache)
        return cache.run(self.conv_out, _silu(self.norm_out(x)))


class Decoder3d(nn.Cell):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_upsample, out_channels, is_residual, dtype):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + list(dim_mult)[::-1]]
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1, dtype=dtype)
        self.mid_block = MidBlock(dims[0], dtype)
        blocks = []
        last = len(dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0 and not is_residual:
                in_dim = in_dim // 2  # Wan2.1 upsamplers halve the channels
            up = i != last
            if is_residual:
                blocks.append(ResidualUpBlock(in_dim, out_dim, num_res_blocks,
                                              temperal_upsample[i] if up else False, up, dtype))
            else:
                mode = ("upsample3d" if temperal_upsample[i] else "upsample2d") if up else None
                blocks.append(UpBlock(in_dim, out_dim, num_res_blocks, mode, dtype))
        self.up_blocks = nn.CellList(blocks)
        self.norm_out = RMSNorm(out_dim, dtype=dtype)
        self.conv_out = CausalConv3d(out_dim, out_channels, 3, padding=1, dtype=dtype)

    def construct(self, x, cache, first_chunk=False):
        x = cache.run(self.conv_in, x)
        x = self.mid_block(x, cache)
        for blk in self.up_blocks:
            x = blk(x, cache, first_chunk)
        return cache.run(self.conv_out, _silu(self.norm_out(x)))


# ----------------------------------------------------------------------------- posterior, patchify

class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)); pipelines use `.mean` (= `.mode()`)."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.mean, logvar = mint.chunk(parameters, 2, dim=1)
        self.logvar = mint.clamp(logvar, -30.0, 20.0)
        self.std = mint.exp(0.5 * self.logvar)
        self.var = mint.exp(self.logvar)

    @property
    def latent_dist(self):
        """diffusers-style access: `vae.encode(x).latent_dist.mean`."""
        return self

    def mode(self):
        return self.mean

    def sample(self, noise):
        """mean + std · noise for a caller-supplied standard normal `noise` (MindSpore tensor or numpy)."""
        if not isinstance(noise, ms.Tensor):
            noise = ms.Tensor(np.asarray(noise, np.float32))
        return self.mean + self.std * noise.astype(self.mean.dtype)


def patchify(x, p):
    """[B,C,F,H,W] → [B, C·p·p, F, H/p, W/p], channel index c·p² + w_sub·p + h_sub (diffusers ≥ PR #12041)."""
    if p is None or p == 1:
        return x
    b, c, f, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"height {h} and width {w} must be divisible by patch_size {p}")
    x = x.reshape(b, c, f, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, f, h // p, w // p)


def unpatchify(x, p):
    if p is None or p == 1:
        return x
    b, cp, f, h, w = x.shape
    c = cp // (p * p)
    x = x.reshape(b, c, p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, c, f, h * p, w * p)


def _blend(a, b, extent, axis):
    """diffusers blend_v (axis -2) / blend_h (axis -1): linear ramp from a's tail into b's head."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    shape = [1] * b.ndim
    shape[axis] = extent
    ramp = np.arange(extent, dtype=np.float64) / extent
    wb = ms.Tensor(ramp.astype(np.float32).reshape(shape)).astype(b.dtype)
    wa = ms.Tensor((1.0 - ramp).astype(np.float32).reshape(shape)).astype(b.dtype)
    n_a = a.shape[axis]
    if axis == -2:
        a_tail, b_head, b_rest = a[:, :, :, n_a - extent:, :], b[:, :, :, :extent, :], b[:, :, :, extent:, :]
    else:
        a_tail, b_head, b_rest = a[..., n_a - extent:], b[..., :extent], b[..., extent:]
    mixed = a_tail * wa + b_head * wb
    return mint.cat([mixed, b_rest], dim=axis) if b_rest.shape[axis] else mixed


def _blend_tiles(rows, blend_h, blend_w, stride_h, stride_w):
    """Blend each tile with its (already blended) upper and left neighbours, crop to the stride, stitch."""
    out_rows = []
    for i, row in enumerate(rows):
        cropped = []
        for j in range(len(row)):
            tile = row[j]
            if i > 0:
                tile = _blend(rows[i - 1][j], tile, blend_h, -2)
            if j > 0:
                tile = _blend(row[j - 1], tile, blend_w, -1)
            row[j] = tile  # diffusers blends in place: later neighbours see the blended tile
            cropped.append(tile[:, :, :, :stride_h, :stride_w])
        out_rows.append(mint.cat(cropped, dim=-1))
    return mint.cat(out_rows, dim=3)


# ----------------------------------------------------------------------------- the model

class AutoencoderKLWan(nn.Cell):
    """Wan VAE (2.1: z 16, ×8 spatial; 2.2: z 48, residual blocks, 2×2 patchify, ×16 spatial); ×4 temporal."""

    WEIGHTS_NAME = "diffusion_pytorch_model"
    KEEP_FP32 = ()
    IGNORE_UNEXPECTED = ()

    def __init__(self, base_dim=96, decoder_base_dim=None, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 attn_scales=(), temperal_downsample=(False, True, True), dropout=0.0, latents_mean=None,
                 latents_std=None, is_residual=False, in_channels=3, out_channels=3, patch_size=None,
                 scale_factor_temporal=4, scale_factor_spatial=8, dtype=ms.float32, config=None):
        super().__init__()
        dtype = to_ms_dtype(dtype)
        self.dtype = dtype
        self.config = dict(config or {})
        self._z_dim = z_dim
        self.patch_size = patch_size
        self.latents_mean = list(latents_mean) if latents_mean is not None else None
        self.latents_std = list(latents_std) if latents_std is not None else None
        self._spatial = scale_factor_spatial
        self._temporal = scale_factor_temporal
        temperal_downsample = list(temperal_downsample)
        self.encoder = Encoder3d(in_channels, base_dim, z_dim * 2, dim_mult, num_res_blocks, list(attn_scales),
                                 temperal_downsample, is_residual, dtype)
        self.quant_conv = CausalConv3d(z_dim * 2, z_dim * 2, 1, dtype=dtype)
        self.post_quant_conv = CausalConv3d(z_dim, z_dim, 1, dtype=dtype)
        self._decoder_base_dim = decoder_base_dim or base_dim
        self.decoder = Decoder3d(decoder_base_dim or base_dim, z_dim, dim_mult, num_res_blocks,
                                 temperal_downsample[::-1], out_channels, is_residual, dtype)
        for p in self.get_parameters():
            # Inference only; also keeps compiled conv slabs from recording gradient graphs.
            p.requires_grad = False
        self.use_tiling = False
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_sample_stride_height = 192
        self.tile_sample_stride_width = 192

    @classmethod
    def from_config(cls, config: dict, dtype=ms.float32):
        keys = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                "temperal_downsample", "dropout", "latents_mean", "latents_std", "is_residual", "in_channels",
                "out_channels", "patch_size", "scale_factor_temporal", "scale_factor_spatial")
        kwargs = {k: config[k] for k in keys if config.get(k) is not None}
        return cls(**kwargs, dtype=dtype, config=config)

    # --- properties used by pipelines
    @property
    def z_dim(self) -> int:
        return self._z_dim

    @property
    def spatial_compression(self) -> int:
        return self._spatial

    @property
    def temporal_compression(self) -> int:
        return self._temporal

    # --- latent normalisation (done by diffusers' pipelines, not by the VAE)
    def _stats(self, dtype):
        if self.latents_mean is None or self.latents_std is None:
            raise ValueError("this VAE config has no latents_mean / latents_std")
        shape = (1, self._z_dim, 1, 1, 1)
        mean = ms.Tensor(np.asarray(self.latents_mean, np.float32).reshape(shape)).astype(dtype)
        # Pipelines build 1/std in float32 and multiply / divide by it; same rounding here.
        inv = ms.Tensor((np.float32(1.0) / np.asarray(self.latents_std, np.float32)).reshape(shape)).astype(dtype)
        return mean, inv

    def normalize_latents(self, z):
        """(z − mean) · (1/std): VAE latent → transformer latent."""
        mean, inv = self._stats(z.dtype)
        return (z - mean) * inv

    def denormalize_latents(self, z):
        """z / (1/std) + mean: transformer latent → VAE latent."""
        mean, inv = self._stats(z.dtype)
        return z / inv + mean

    # --- tiling
    def enable_tiling(self, tile_sample_min_height=None, tile_sample_min_width=None,
                      tile_sample_stride_height=None, tile_sample_stride_width=None):
        """Spatial tiling for encode and decode (pixel units; diffusers' defaults 256/256/192/192)."""
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
        self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
        self.tile_sample_stride_height = tile_sample_stride_height or self.tile_sample_stride_height
        self.tile_sample_stride_width = tile_sample_stride_width or self.tile_sample_stride_width

    def disable_tiling(self):
        self.use_tiling = False

    # --- encode
    def _encode_frames(self, x):
        """Chunks of 1, 4, 4, … frames through the encoder with one shared cache, then quant_conv."""
        cache = FeatCache()
        outs = []
        for i in range(1 + (x.shape[2] - 1) // 4):
            cache.start_chunk()
            chunk = x[:, :, :1] if i == 0 else x[:, :, 1 + 4 * (i - 1):1 + 4 * i]
            outs.append(self.encoder(chunk, cache))
        return outs

    def _encode(self, x, tiled):
        h, w = x.shape[3], x.shape[4]
        x = patchify(x.astype(self.dtype), self.patch_size)
        if tiled and (w > self.tile_sample_min_width or h > self.tile_sample_min_height):
            return self._tiled_encode(x)
        outs = self._encode_frames(x)
        return self.quant_conv(outs[0] if len(outs) == 1 else mint.cat(outs, dim=2))

    def _tiled_encode(self, x):
        _, _, _, height, width = x.shape
        ratio = self._spatial // (self.patch_size or 1)
        lat_h, lat_w = height // ratio, width // ratio
        min_h, min_w = self.tile_sample_min_height // ratio, self.tile_sample_min_width // ratio
        stride_h, stride_w = self.tile_sample_stride_height // ratio, self.tile_sample_stride_width // ratio
        rows = []
        for i in range(0, height, self.tile_sample_stride_height):
            row = []
            for j in range(0, width, self.tile_sample_stride_width):
                tile = x[:, :, :, i:i + self.tile_sample_min_height, j:j + self.tile_sample_min_width]
                outs = [self.quant_conv(o) for o in self._encode_frames(tile)]
                row.append(outs[0] if len(outs) == 1 else mint.cat(outs, dim=2))
            rows.append(row)
        enc = _blend_tiles(rows, min_h - stride_h, min_w - stride_w, stride_h, stride_w)
        return enc[:, :, :, :lat_h, :lat_w]

    def encode(self, x, tiled: bool | None = None) -> DiagonalGaussian:
        """Video [B, C, F, H, W] in [-1, 1] (F = 4k+1) → posterior over [B, z, k+1, H/s, W/s].

        `tiled=None` follows `enable_tiling()`; tiling applies only when the video exceeds the tile size.
        """
        tiled = self.use_tiling if tiled is None else tiled
        return DiagonalGaussian(self._encode(x, tiled))

    # --- decode
    def _decode_frames(self, z):
        """post_quant_conv, then the decoder one latent frame at a time with one shared cache."""
        cache = FeatCache()
        outs = []
        for i in range(z.shape[2]):
            cache.start_chunk()
            outs.append(self.decoder(self.post_quant_conv(z[:, :, i:i + 1]), cache, i == 0))
        return outs[0] if len(outs) == 1 else mint.cat(outs, dim=2)

    def decode(self, z, tiled: bool | None = None):
        """Latent [B, z, T, h, w] → video [B, C, 1 + 4(T−1), h·s, w·s], clamped to [-1, 1]."""
        tiled = self.use_tiling if tiled is None else tiled
        z = z.astype(self.dtype)
        height, width = z.shape[3], z.shape[4]
        reserve_working(self.decode_working_nbytes(z.shape, tiled), self)
        if tiled and (width > self.tile_sample_min_width // self._spatial
                      or height > self.tile_sample_min_height // self._spatial):
            out = self._tiled_decode(z)
        else:
            out = self._decode_frames(z)
        out = unpatchify(out, self.patch_size)
        return mint.clamp(out, -1.0, 1.0)

    # Working memory of decoding one latent frame, per output pixel and decoder base channel: a peak of
    # 10 GB above the weights for a Wan2.1 VAE (96 base channels) at 832x480 on CPU (5 frames; frames are
    # decoded one latent frame at a time, so more frames add only their output).
    DECODE_BYTES_PER_PIXEL_CHANNEL = 256

    def decode_working_nbytes(self, latent_shape, tiled: bool = False) -> int:
        """Activation memory `decode` needs (frames are decoded one latent frame at a time): for the
        memory budget, which releases models not in use (`models.residency`) before it runs out."""
        b, _, t, h, w = latent_shape
        h, w = h * self._spatial, w * self._spatial
        frames = b * (1 + self._temporal * (t - 1))
        output = 2 * 4 * 3 * frames * h * w                  # the decoded frames, and their concatenation
        if tiled:
            h, w = min(h, self.tile_sample_min_height), min(w, self.tile_sample_min_width)
        return self.DECODE_BYTES_PER_PIXEL_CHANNEL * h * w * self._decoder_base_dim + output

    def _tiled_decode(self, z):
        _, _, _, height, width = z.shape
        s, p = self._spatial, self.patch_size or 1
        sample_h, sample_w = height * s // p, width * s // p
        min_h, min_w = self.tile_sample_min_height // s, self.tile_sample_min_width // s
        lstride_h, lstride_w = self.tile_sample_stride_height // s, self.tile_sample_stride_width // s
        stride_h, stride_w = self.tile_sample_stride_height // p, self.tile_sample_stride_width // p
        blend_h = self.tile_sample_min_height // p - stride_h
        blend_w = self.tile_sample_min_width // p - stride_w
        rows = []
        for i in range(0, height, lstride_h):
            row = []
            for j in range(0, width, lstride_w):
                row.append(self._decode_frames(z[:, :, :, i:i + min_h, j:j + min_w]))
            rows.append(row)
        dec = _blend_tiles(rows, blend_h, blend_w, stride_h, stride_w)
        return dec[:, :, :, :sample_h, :sample_w]

    def construct(self, x):
        return self.decode(self.encode(x).mean)


__all__ = ["AutoencoderKLWan", "DiagonalGaussian", "patchify", "unpatchify"]
