"""The Wan video diffusion transformer (diffusers' `WanTransformer3DModel`) on MindSpore.

One config-driven class covers Wan2.1 T2V/I2V/FLF2V and Wan2.2 T2V/I2V/TI2V.
Parameter names equal diffusers' checkpoint keys. Numerics follow diffusers:
modulation in float32, FP32 LayerNorms, temb rounded to the compute dtype,
RoPE and the timestep sinusoid from float64/float32 numpy tables.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import mindspore as ms
from mindspore import Parameter, mint, nn

from .layers import badd, bmul, expand_to, param_init, LayerNorm, Linear, RMSNorm, gelu_exact, gelu_tanh, silu
from .rope import rope_cos_sin, rope_pair_rotation, timestep_sinusoid
from ..backend import onednn
from ..backend.runtime import device
from .transformer_block import (CPU_FFN_OFFLOAD_MIN_ROWS, attention_outside_graph, finish_on_cpu, make_block_fn,
                                onednn_matmuls)
from .attention import SCORE_BUDGET_BYTES, graph_score_nbytes, score_rows
from .residency import reserve_working
from ..backend import memory


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
    """Holds the attention parameters under diffusers' names; the math is in `transformer_block`."""

    def __init__(self, dim, heads, eps, added_kv_proj_dim=None, dtype=ms.float32):
        super().__init__()
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

    def weights(self):
        w = (self.to_q.weight, self.to_q.bias, self.to_k.weight, self.to_k.bias, self.to_v.weight, self.to_v.bias,
             self.to_out[0].weight, self.to_out[0].bias, self.norm_q.weight, self.norm_k.weight)
        if self.has_image_branch:
            w += (self.add_k_proj.weight, self.add_k_proj.bias, self.add_v_proj.weight, self.add_v_proj.bias,
                  self.norm_added_k.weight)
        return w


@lru_cache(maxsize=None)
def _compiled(block_fn):
    """One jit wrapper (and so one graph per shape) per block configuration, shared by models."""
    return ms.jit(block_fn)


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
        # Decided here, not per call: graph mode (ms.jit) cannot query the device.
        fused = device() == "Ascend" and dtype in (ms.float16, ms.bfloat16)
        self.heads, self.fused_attention = heads, fused
        self.fn_config = (heads, eps, cross_attn_norm, added_kv_proj_dim is not None, fused)
        self.fn = make_block_fn(*self.fn_config)
        # The compiled variant for long sequences leaves the FFN to oneDNN (`finish_on_cpu`).
        self.fn_ffn_outside = make_block_fn(*self.fn_config, True) if onednn_matmuls(dtype) else None

    def weights(self):
        w = (self.scale_shift_table,) + self.attn1.weights() + self.attn2.weights()
        if self.cross_attn_norm:
            w += (self.norm2.weight, self.norm2.bias)
        ffn = self.ffn.net
        return w + (ffn[0].proj.weight, ffn[0].proj.bias, ffn[2].weight, ffn[2].bias)

    def construct(self, x, context, temb, rope, fn=None, patch=None, weights=None):
        """`rope`: (cos, sin, rot) of `apply_rope`; `fn`: a compiled `make_block_fn` of the same
        configuration (shared by all blocks); `patch`: maps the weights to the ones to use
        (LoRA), leaving the parameters themselves untouched; `weights`: the values to use instead
        of the parameters' (a streamed model's, in `weights()` order: `models.block_stream`)."""
        if weights is None:
            weights = self.weights() if patch is None else patch(self.weights())
        elif patch is not None:
            weights = patch(self.weights(), weights)
        if fn is None:
            return self.fn(x, context, temb, *rope, *weights)
        # Plain tensors, not Parameters: a graph given Parameters binds them and is compiled
        # (and holds its memory) once per block instead of once for all. `Tensor(p)` aliases the
        # parameter's memory; `p.value()` copies it (59 ms per 1.3B block on CPU, 1.8 s a forward).
        weights = [ms.Tensor(w) if isinstance(w, Parameter) else w for w in weights]
        out = fn(x, context, temb, *rope, *weights)
        if isinstance(out, tuple):   # compiled with ffn_outside
            return finish_on_cpu(out, *weights[-4:])
        return out


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
        l1, l2 = self.linear_1, self.linear_2
        if onednn_matmuls(l1.weight.dtype) and x.dtype == ms.float32:   # 10–20% faster than MindSpore's ops
            return onednn.feed_forward(x, l1.weight, l1.bias, l2.weight, l2.bias)
        return l2(gelu_tanh(l1(x)))


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
        self.block_args = (dim, ffn_dim, num_attention_heads, cross_attn_norm, eps, added_kv_proj_dim, dtype)
        self.blocks = nn.CellList([WanTransformerBlock(*self.block_args) for _ in range(num_layers)])
        self.norm_out = LayerNorm(dim, eps, affine=False)
        self.proj_out = Linear(dim, out_channels * int(np.prod(self.patch_size)), dtype=dtype)
        self.scale_shift_table = Parameter(param_init("zeros", (1, 2, dim), ms.float32), name="scale_shift_table")
        self.config: dict = {}
        self._jit_blocks = None
        self._jit_blocks_ffn = None
        self._jit_blocks_split = self._jit_blocks_split_ffn = None
        self._attention_room, self._split_plan = None, {}     # set per forward by `_prepare_forward`
        self._active_patch = None
        self._rope_cache: dict = {}
        self._rot = ms.Tensor(rope_pair_rotation(attention_head_dim))

    CONFIG_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                   "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim",
                   "added_kv_proj_dim", "rope_max_seq_len", "pos_embed_seq_len")

    @classmethod
    def from_config(cls, config: dict, dtype=ms.float32) -> "WanTransformer3DModel":
        model = cls(**{k: config[k] for k in cls.CONFIG_KEYS if k in config}, dtype=dtype)
        full = {"patch_size": [1, 2, 2], "in_channels": 16, "out_channels": 16}
        full.update({k: v for k, v in config.items() if not k.startswith("_")})
        model.config = full
        return model

    def compile(self):
        """Run the transformer blocks under `ms.jit`: one graph, compiled once per latent shape
        and shared by all blocks (their weights are its inputs); memory stays that of one
        block's intermediates. On CPU, long sequences take the variant whose FFN runs in oneDNN,
        and self-attention too long for the budget runs between two graphs (`_compiled_block_fn`)."""
        first = self.blocks[0] if len(self.blocks) else None
        self._jit_blocks = _compiled(first.fn) if first is not None else None
        self._jit_blocks_ffn = (_compiled(first.fn_ffn_outside)
                                if first is not None and first.fn_ffn_outside is not None else None)
        # Sequences whose self-attention is chunked: the attention runs between two graphs.
        self._jit_blocks_split = attention_outside_graph(*first.fn_config) if first is not None else None
        self._jit_blocks_split_ffn = (attention_outside_graph(*first.fn_config, True)
                                      if self._jit_blocks_ffn is not None else None)
        return self

    def _prepare_forward(self, latent_shape):
        """Before a forward: reserve its working memory (releasing models not in use if the budget
        needs it) and decide afresh how long self-attention is compiled (`_compiled_block_fn`)."""
        working = self.working_nbytes(latent_shape)
        reserve_working(working, self.block_stream or self)
        self._attention_room, self._split_plan = memory.room() - working, {}

    def _compiled_block_fn(self, block, x):
        """The compiled function for a block on tokens x [B, L, D]. The whole block is one graph,
        unless its self-attention is split into score chunks that the budget's room cannot hold
        all at once: one graph plans its chunks together (the 1.3B block at 15,600 tokens peaked
        at 13.8 GB compiled whole, 5.6 GB split), so then the attention runs eagerly between two
        graphs (`AttentionOutsideGraph`: the same numbers, 1.07-1.13x the time at 7,800-15,600
        tokens)."""
        b, n = x.shape[0], x.shape[1]
        ffn = self._jit_blocks_ffn is not None and b * n >= CPU_FFN_OFFLOAD_MIN_ROWS
        rows = score_rows(b, block.heads, n)
        if not block.fused_attention and rows < n:
            split = self._split_plan.get((b, n))
            if split is None:
                room = memory.room() if self._attention_room is None else self._attention_room
                split = self._split_plan[(b, n)] = room < graph_score_nbytes(b, block.heads, n, n)
            if split:
                return self._jit_blocks_split_ffn if ffn else self._jit_blocks_split
        return self._jit_blocks_ffn if ffn else self._jit_blocks

    def _rope(self, gf, gh, gw):
        key = (gf, gh, gw)
        if key not in self._rope_cache:
            if len(self._rope_cache) >= 8:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            cos, sin = rope_cos_sin(self.head_dim, gf, gh, gw, self.rope_max_seq_len)
            self._rope_cache[key] = (ms.Tensor(np.repeat(cos, 2, axis=1)), ms.Tensor(np.repeat(sin, 2, axis=1)),
                                     self._rot)
        return self._rope_cache[key]

    def _call_block(self, block, *args):
        """block(*args), through the compiled graph when `compile()` was called, with the
        weight patch of a LoRA view (`nodes.wan.models.lora`) while one is running, and the
        weights of a streamed block from its stream (`stream_blocks`)."""
        patch = self._active_patch
        extra = {}
        stream = getattr(self, "_block_stream", None)
        if stream is not None:
            k = self._stream_index.get(id(block))
            if k is not None:
                extra["weights"] = stream.get(k)
        if self._jit_blocks is not None:
            try:
                return block(*args, fn=self._compiled_block_fn(block, args[0]), patch=patch, **extra)
            except (RuntimeError, TypeError, ValueError) as e:  # graph compile failed: stay correct, run eagerly
                import warnings
                warnings.warn(f"ms.jit compilation of the transformer blocks failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); running eagerly")
                self._jit_blocks = None
        return block(*args, patch=patch, **extra)

    def stream_blocks(self, stream):
        """Take the blocks' weights from `stream` (a `block_stream.BlockStream` over `self.blocks`, in
        order) instead of their parameters, which then stay unallocated; None goes back to them."""
        self._block_stream = stream
        self._stream_index = {id(b): k for k, b in enumerate(self.blocks)} if stream is not None else {}
        return self

    @property
    def block_stream(self):
        return getattr(self, "_block_stream", None)

    def streamed_parameter(self, name: str) -> bool:
        """Whether the parameter `name` is supplied by the block stream (never allocated)."""
        return self.block_stream is not None and name.startswith("blocks.")

    def working_nbytes(self, latent_shape) -> int:
        """Activation memory of one forward on latents of `latent_shape` (an upper estimate for the
        memory budget: a block's float32 intermediates, its FFN hidden state and the attention
        score chunks), so that models not in use are released before it runs out. Fitted to the
        1.3B block's measured peaks, eager and with the attention outside the graph: 4.0 / 4.7 /
        7.5 GB (eager 9.2 GB) above the weights at 7,800 / 15,600 / 32,760 tokens, whose part
        that does not grow with the sequence is about six score chunks."""
        b, _, f, h, w = latent_shape
        pt, ph, pw = self.patch_size
        tokens = (f // pt) * (h // ph) * (w // pw)
        ffn = self.blocks[0].ffn.net[2].in_features if len(self.blocks) else 0
        scores = 6 * min(SCORE_BUDGET_BYTES, 4 * b * (self.dim // self.head_dim) * tokens * max(tokens, 512))
        return 4 * b * tokens * (16 * self.dim + 3 * ffn) + scores

    def resident_nbytes(self) -> int:
        """Bytes of weights held now: every parameter, or for a streamed model the resident
        ones plus the blocks its stream holds widened."""
        stream = self.block_stream
        total = sum(int(np.prod(p.shape)) * p.itemsize for name, p in self.parameters_and_names()
                    if stream is None or not self.streamed_parameter(name))
        return total + (stream.resident_nbytes() if stream is not None else 0)

    def _embed(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image):
        """Patch tokens [B, L, D], context, temb, the blocks' modulation input and RoPE tables."""
        dtype = self.dtype
        b, _, f, h, w = hidden_states.shape
        pt, ph, pw = self.patch_size
        cos, sin, rot = self._rope(f // pt, h // ph, w // pw)
        full = (b, self.dim // self.head_dim) + tuple(cos.shape)   # expanded once, not in every block
        rope = (expand_to(cos, full), expand_to(sin, full), rot)
        x = self.patch_embedding(hidden_states.astype(dtype))          # [B, L, D]
        ts = timestep.asnumpy() if hasattr(timestep, "asnumpy") else np.asarray(timestep)
        ce = self.condition_embedder
        sinus = ms.Tensor(timestep_sinusoid(ts.reshape(-1), ce.freq_dim))
        if ts.ndim == 2:  # per-token timesteps (Wan2.2 TI2V)
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
        return x, context, temb, proj, rope

    def _head(self, x, temb, shape):
        """Output modulation, projection and unpatchify to [B, C_out, F, H, W] (channel fastest in a patch)."""
        b, _, f, h, w = shape
        pt, ph, pw = self.patch_size
        if temb.ndim == 3:  # per-token temb [B, L, D]
            mod = self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)
            shift, scale = [m.squeeze(2) for m in mint.chunk(mod, 2, 2)]
        else:
            mod = self.scale_shift_table + temb.unsqueeze(1)
            shift, scale = mint.chunk(mod, 2, 1)
        x = badd(bmul(self.norm_out(x.astype(ms.float32)), 1 + scale), shift).astype(x.dtype)
        x = self.proj_out(x)
        x = x.reshape(b, f // pt, h // ph, w // pw, pt, ph, pw, self.out_channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, self.out_channels, f, h, w)

    def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                  blocks_hook=None):
        """`blocks_hook(tokens, run, n_blocks) -> tokens` replaces the pass through all blocks, for step
        caching (`pipelines.step_cache`): `run(x, start, stop)` runs blocks [start, stop) (stop None = to
        the end) on tokens x, with the same weights (a LoRA view's patch included) as a plain call."""
        self._prepare_forward(hidden_states.shape)
        x, context, temb, proj, rope = self._embed(hidden_states, timestep, encoder_hidden_states,
                                                   encoder_hidden_states_image)
        if blocks_hook is not None:
            x = blocks_hook(x, lambda h, start, stop: self._run_blocks(h, start, stop, context, proj, rope),
                            len(self.blocks))
            return self._head(x, temb, hidden_states.shape)
        for block in self.blocks:
            x = self._call_block(block, x, context, proj, rope)
        return self._head(x, temb, hidden_states.shape)

    def _run_blocks(self, x, start, stop, context, proj, rope):
        # by index: slicing a CellList builds a new container around the blocks
        for k in range(start, len(self.blocks) if stop is None else stop):
            x = self._call_block(self.blocks[k], x, context, proj, rope)
        return x


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
