"""The Wan video diffusion transformer (diffusers' `WanTransformer3DModel`) on MindSpore.

One config-driven class covers Wan2.1 T2V/I2V/FLF2V and Wan2.2 T2V/I2V/TI2V.
Parameter names equal diffusers' checkpoint keys. Numerics follow diffusers:
modulation in float32, FP32 LayerNorms, temb rounded to the compute dtype,
RoPE and the timestep sinusoid from float64/float32 numpy tables.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, mint, nn

from .attention import attention
from .layers import param_init, LayerNorm, Linear, RMSNorm, gelu_exact, gelu_tanh, silu
from .rope import rope_cos_sin, timestep_sinusoid
from .runtime import device

TEXT_TOKENS = 512  # diffusers splits image tokens from text tokens by this fixed length


class FeedForward(nn.Cell):
    """`net.0.proj` -> GELU -> `net.2` (diffusers' FeedForward key layout)."""

    def __init__(self, dim, inner, out, approximate: bool, dtype):
        super().__init__()
        self.net = nn.CellList([_Proj(dim, inner, dtype), nn.Identity(), Linear(inner, out, dtype=dtype)])
        self.act = gelu_tanh if approximate else gelu_exact

    def construct(self, x):
        return self.net[2](self.act(self.net[0].proj(x)))


class _Proj(nn.Cell):
    def __init__(self, dim, inner, dtype):
        super().__init__()
        self.proj = Linear(dim, inner, dtype=dtype)


class WanAttention(nn.Cell):
    def __init__(self, dim, heads, eps, added_kv_proj_dim=None, dtype=ms.float32):
        super().__init__()
        self.heads = heads
        # Decided here, not per call: graph mode (ms.jit) cannot query the device.
        self.fused = device() == "Ascend" and dtype in (ms.float16, ms.bfloat16)
        self.to_q = Linear(dim, dim, dtype=dtype)
        self.to_k = Linear(dim, dim, dtype=dtype)
        self.to_v = Linear(dim, dim, dtype=dtype)
        self.to_out = nn.CellList([Linear(dim, dim, dtype=dtype)])
        self.norm_q = RMSNorm(dim, eps, dtype=dtype)
        self.norm_k = RMSNorm(dim, eps, dtype=dtype)
        self.has_image_branch = added_kv_proj_dim is not None
        if self.has_image_branch:
            self.add_k_proj = Linear(added_kv_proj_dim, dim, dtype=dtype)
            self.add_v_proj = Linear(added_kv_proj_dim, dim, dtype=dtype)
            self.norm_added_k = RMSNorm(dim, eps, dtype=dtype)

    def _heads(self, x):
        b, l, d = x.shape
        return x.reshape(b, l, self.heads, d // self.heads).swapaxes(1, 2)

    def _merge(self, x):
        b, h, l, d = x.shape
        return x.swapaxes(1, 2).reshape(b, l, h * d)

    def construct(self, x, context=None, rope=None):
        ctx_img = None
        if context is None:
            context = x
        elif self.has_image_branch:
            n_img = context.shape[1] - TEXT_TOKENS
            ctx_img, context = context[:, :n_img], context[:, n_img:]
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(context)))
        v = self._heads(self.to_v(context))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = self._merge(attention(q, k, v, use_fused=self.fused))
        if ctx_img is not None:
            k_img = self._heads(self.norm_added_k(self.add_k_proj(ctx_img)))
            v_img = self._heads(self.add_v_proj(ctx_img))
            out = out + self._merge(attention(q, k_img, v_img, use_fused=self.fused))
        return self.to_out[0](out)


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, H, L, d] by cos/sin [L, d/2]."""
    b, h, l, d = x.shape
    dtype = x.dtype
    pairs = x.astype(ms.float32).reshape(b, h, l, d // 2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    even = x1 * cos - x2 * sin
    odd = x1 * sin + x2 * cos
    return mint.cat([even.unsqueeze(-1), odd.unsqueeze(-1)], dim=-1).reshape(b, h, l, d).astype(dtype)


class WanTransformerBlock(nn.Cell):
    def __init__(self, dim, ffn_dim, heads, cross_attn_norm, eps, added_kv_proj_dim, dtype):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps, affine=False)
        self.attn1 = WanAttention(dim, heads, eps, dtype=dtype)
        self.attn2 = WanAttention(dim, heads, eps, added_kv_proj_dim, dtype=dtype)
        self.cross_attn_norm = cross_attn_norm
        self.norm2 = LayerNorm(dim, eps, affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, ffn_dim, dim, approximate=True, dtype=dtype)
        self.norm3 = LayerNorm(dim, eps, affine=False)
        self.scale_shift_table = Parameter(param_init("zeros", (1, 6, dim), ms.float32), name="scale_shift_table")

    def construct(self, x, context, temb, rope):
        dtype = x.dtype
        if temb.ndim == 4:  # per-token (Wan2.2 TI2V): temb [B, L, 6, D]
            mod = self.scale_shift_table.unsqueeze(0) + temb.astype(ms.float32)
            shift, scale, gate, c_shift, c_scale, c_gate = [m.squeeze(2) for m in mint.chunk(mod, 6, 2)]
        else:               # temb [B, 6, D]
            mod = self.scale_shift_table + temb.astype(ms.float32)
            shift, scale, gate, c_shift, c_scale, c_gate = mint.chunk(mod, 6, 1)
        xf = x.astype(ms.float32)
        n = (self.norm1(xf) * (1 + scale) + shift).astype(dtype)
        x = (xf + self.attn1(n, None, rope).astype(ms.float32) * gate).astype(dtype)
        n = self.norm2(x.astype(ms.float32)).astype(dtype) if self.cross_attn_norm else x
        x = x + self.attn2(n, context, None)
        xf = x.astype(ms.float32)
        n = (self.norm3(xf) * (1 + c_scale) + c_shift).astype(dtype)
        return (xf + self.ffn(n).astype(ms.float32) * c_gate).astype(dtype)


class TimestepEmbedding(nn.Cell):
    def __init__(self, in_dim, dim):
        super().__init__()
        self.linear_1 = Linear(in_dim, dim, dtype=ms.float32)
        self.linear_2 = Linear(dim, dim, dtype=ms.float32)

    def construct(self, x):
        return self.linear_2(silu(self.linear_1(x)))


class TextProjection(nn.Cell):
    def __init__(self, in_dim, dim, dtype):
        super().__init__()
        self.linear_1 = Linear(in_dim, dim, dtype=dtype)
        self.linear_2 = Linear(dim, dim, dtype=dtype)

    def construct(self, x):
        return self.linear_2(gelu_tanh(self.linear_1(x)))


class ImageEmbedding(nn.Cell):
    def __init__(self, in_dim, dim, pos_embed_seq_len, dtype):
        super().__init__()
        self.norm1 = LayerNorm(in_dim, 1e-5, affine=True)
        self.ff = FeedForward(in_dim, in_dim, dim, approximate=False, dtype=dtype)
        self.norm2 = LayerNorm(dim, 1e-5, affine=True)
        self.pos_embed = None
        if pos_embed_seq_len is not None:
            self.pos_embed = Parameter(param_init("zeros", (1, pos_embed_seq_len, in_dim), dtype), name="pos_embed")

    def construct(self, x):
        if self.pos_embed is not None:
            b, l, d = x.shape
            x = x.reshape(-1, 2 * l, d) + self.pos_embed
        return self.norm2(self.ff(self.norm1(x)))


class ConditionEmbedder(nn.Cell):
    def __init__(self, dim, freq_dim, text_dim, image_dim, pos_embed_seq_len, dtype):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = TimestepEmbedding(freq_dim, dim)
        self.time_proj = Linear(dim, dim * 6, dtype=dtype)
        self.text_embedder = TextProjection(text_dim, dim, dtype)
        self.image_embedder = ImageEmbedding(image_dim, dim, pos_embed_seq_len, dtype) if image_dim else None


class WanTransformer3DModel(nn.Cell):
    WEIGHTS_NAME = "diffusion_pytorch_model"
    KEEP_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
    IGNORE_UNEXPECTED = ("norm_added_q",)
    QK_NORMS = ("rms_norm_across_heads",)

    def __init__(self, patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                 rope_max_seq_len=1024, pos_embed_seq_len=None, dtype=ms.float32):
        super().__init__()
        if qk_norm not in self.QK_NORMS:
            raise ValueError(f"qk_norm {qk_norm!r} is not supported (Wan uses {self.QK_NORMS[0]!r})")
        if attention_head_dim % 2:
            raise ValueError(f"attention_head_dim must be even for RoPE, got {attention_head_dim}")
        dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.patch_size = tuple(patch_size)
        self.head_dim, self.dim, self.out_channels = attention_head_dim, dim, out_channels
        self.rope_max_seq_len = rope_max_seq_len
        self.dtype = dtype
        self.patch_embedding = _PatchEmbed(in_channels, dim, self.patch_size, dtype)
        self.condition_embedder = ConditionEmbedder(dim, freq_dim, text_dim, image_dim, pos_embed_seq_len, dtype)
        self.blocks = nn.CellList([WanTransformerBlock(dim, ffn_dim, num_attention_heads, cross_attn_norm, eps,
                                                       added_kv_proj_dim, dtype) for _ in range(num_layers)])
        self.norm_out = LayerNorm(dim, eps, affine=False)
        self.proj_out = Linear(dim, out_channels * int(np.prod(self.patch_size)), dtype=dtype)
        self.scale_shift_table = Parameter(param_init("zeros", (1, 2, dim), ms.float32), name="scale_shift_table")
        self.config: dict = {}
        self._jit_blocks = None

    @classmethod
    def from_config(cls, config: dict, dtype=ms.float32) -> "WanTransformer3DModel":
        keys = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim",
                "added_kv_proj_dim", "rope_max_seq_len", "pos_embed_seq_len")
        model = cls(**{k: config[k] for k in keys if k in config}, dtype=dtype)
        full = {"patch_size": [1, 2, 2], "in_channels": 16, "out_channels": 16}
        full.update({k: v for k, v in config.items() if not k.startswith("_")})
        model.config = full
        return model

    def compile(self):
        """Run the transformer blocks under `ms.jit` (graph compilation; recompiles per new shape).

        About 3x faster on CPU, but MindSpore's graph keeps every block's intermediates:
        measured 1.8 GB per block of the 1.3B model at 1,950 tokens (eager: 0.2 GB in all),
        so long videos must run eagerly.
        """
        self._jit_blocks = ms.jit(self._run_blocks)
        return self

    def _run_blocks(self, x, context, temb, cos, sin):
        for block in self.blocks:
            x = block(x, context, temb, (cos, sin))
        return x

    def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None):
        dtype = self.dtype
        b, _, f, h, w = hidden_states.shape
        pt, ph, pw = self.patch_size
        gf, gh, gw = f // pt, h // ph, w // pw
        cos, sin = rope_cos_sin(self.head_dim, gf, gh, gw, self.rope_max_seq_len)
        cos, sin = ms.Tensor(cos), ms.Tensor(sin)

        x = self.patch_embedding(hidden_states.astype(dtype))          # [B, L, D]
        ts = timestep.asnumpy() if hasattr(timestep, "asnumpy") else np.asarray(timestep)
        per_token = ts.ndim == 2
        ce = self.condition_embedder
        sinus = ms.Tensor(timestep_sinusoid(ts.reshape(-1), ce.freq_dim))
        if per_token:
            sinus = sinus.reshape(ts.shape[0], ts.shape[1], -1)
        context = encoder_hidden_states.astype(dtype)
        temb = ce.time_embedder(sinus).astype(context.dtype)
        proj = ce.time_proj(silu(temb))
        proj = proj.reshape(proj.shape[:-1] + (6, self.dim))              # [B, 6, D] or [B, L, 6, D]
        context = ce.text_embedder(context)
        if encoder_hidden_states_image is not None:
            if ce.image_embedder is None:
                raise ValueError("this transformer has no image branch (image_dim is null) but got image embeddings")
            img = ce.image_embedder(encoder_hidden_states_image.astype(dtype))
            context = mint.cat([img, context], dim=1)

        if self._jit_blocks is not None:
            try:
                x = self._jit_blocks(x, context, proj, cos, sin)
            except (RuntimeError, TypeError, ValueError) as e:  # graph compile failed: stay correct, run eagerly
                import warnings
                warnings.warn(f"ms.jit compilation of the transformer blocks failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); running eagerly")
                self._jit_blocks = None
                x = self._run_blocks(x, context, proj, cos, sin)
        else:
            x = self._run_blocks(x, context, proj, cos, sin)

        if per_token:
            mod = self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)
            shift, scale = [m.squeeze(2) for m in mint.chunk(mod, 2, 2)]
        else:
            mod = self.scale_shift_table + temb.unsqueeze(1)
            shift, scale = mint.chunk(mod, 2, 1)
        x = (self.norm_out(x.astype(ms.float32)) * (1 + scale) + shift).astype(x.dtype)
        x = self.proj_out(x)
        x = x.reshape(b, gf, gh, gw, pt, ph, pw, self.out_channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, self.out_channels, f, h, w)


class _PatchEmbed(nn.Cell):
    """Conv3d with kernel == stride, done as one matmul over non-overlapping patches."""

    def __init__(self, in_ch, dim, patch, dtype):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.weight = Parameter(param_init("zeros", (dim, in_ch) + patch, dtype), name="weight")
        self.bias = Parameter(param_init("zeros", (dim,), dtype), name="bias")
        self.matmul = ms.ops.MatMul(transpose_b=True)

    def construct(self, x):
        b, c, f, h, w = x.shape
        pt, ph, pw = self.patch
        x = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(-1, c * pt * ph * pw)
        y = self.matmul(x, self.weight.reshape(self.dim, -1)) + self.bias
        return y.reshape(b, -1, self.dim)
