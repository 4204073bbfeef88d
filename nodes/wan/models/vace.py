"""diffusers' `WanVACETransformer3DModel`: the Wan transformer plus a VACE control branch.

The control video's tokens run through their own blocks (the same block math,
hence the same compiled graph); each emits a hint added after the main block of
the same rank in `vace_layers`.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import mint, nn

from .layers import Linear
from .transformer import WanTransformer3DModel, WanTransformerBlock, _PatchEmbed


class WanVACETransformerBlock(WanTransformerBlock):
    def __init__(self, dim, ffn_dim, heads, cross_attn_norm, eps, added_kv_proj_dim, dtype, input_projection):
        super().__init__(dim, ffn_dim, heads, cross_attn_norm, eps, added_kv_proj_dim, dtype)
        self.proj_in = Linear(dim, dim, dtype=dtype) if input_projection else None
        self.proj_out = Linear(dim, dim, dtype=dtype)

    def construct(self, x, context, control, temb, rope, fn=None, patch=None):
        """(hint for the main stream, control state for the next VACE block)."""
        if self.proj_in is not None:
            control = self.proj_in(control) + x
        control = super().construct(control, context, temb, rope, fn, patch)
        return self.proj_out(control), control


class WanVACETransformer3DModel(WanTransformer3DModel):
    CONFIG_KEYS = WanTransformer3DModel.CONFIG_KEYS + ("vace_layers", "vace_in_channels")

    def __init__(self, *args, vace_layers=(0, 5, 10, 15, 20, 25, 30, 35), vace_in_channels=96, dtype=ms.float32,
                 **kwargs):
        super().__init__(*args, dtype=dtype, **kwargs)
        vace_layers = tuple(vace_layers)
        if max(vace_layers) >= len(self.blocks):
            raise ValueError(f"VACE layers {list(vace_layers)} exceed the number of transformer layers "
                             f"{len(self.blocks)}")
        if 0 not in vace_layers:
            raise ValueError("VACE layers must include layer 0")
        self.vace_layers = vace_layers
        self.vace_patch_embedding = _PatchEmbed(vace_in_channels, self.dim, self.patch_size, dtype)
        self.vace_blocks = nn.CellList([WanVACETransformerBlock(*self.block_args, input_projection=i == 0)
                                        for i in range(len(vace_layers))])

    def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                  control_hidden_states=None, control_hidden_states_scale=None, blocks_hook=None):
        """`blocks_hook` as the base model's (step caching): `run(x, start, stop)` runs main blocks
        [start, stop) with their hints added; a hint is computed when its block first needs it, so a
        step that skips the blocks skips the control branch too."""
        if control_hidden_states is None:
            raise ValueError("WanVACETransformer3DModel needs control_hidden_states")
        n = len(self.vace_layers)
        if control_hidden_states_scale is None:
            scales = [1.0] * n
        else:
            scales = control_hidden_states_scale
            scales = [float(v) for v in (scales.asnumpy() if hasattr(scales, "asnumpy") else scales)]
            if len(scales) != n:
                raise ValueError(f"control_hidden_states_scale has {len(scales)} values; vace_layers has {n}")
        self._prepare_forward(hidden_states.shape)
        x, context, temb, proj, rope = self._embed(hidden_states, timestep, encoder_hidden_states,
                                                   encoder_hidden_states_image)
        control = self.vace_patch_embedding(control_hidden_states.astype(self.dtype))
        missing = x.shape[1] - control.shape[1]
        if missing:  # fewer control tokens than video tokens: zero-pad at the end
            pad = mint.zeros((control.shape[0], missing, control.shape[2]), dtype=control.dtype)
            control = mint.cat([control, pad], dim=1)
        # hints go out in block order, whatever the order of vace_layers
        rank = {layer: k for k, layer in enumerate(sorted(self.vace_layers))}
        tokens, hints, state = x, [], [control]

        def hint(k):
            while len(hints) <= k:    # the control branch is a chain: block k needs block k-1's state
                h, state[0] = self._call_block(self.vace_blocks[len(hints)], tokens, context, state[0], proj, rope)
                hints.append(h)
            return hints[k]

        def run(h, start, stop):
            for i in range(start, len(self.blocks) if stop is None else stop):
                h = self._call_block(self.blocks[i], h, context, proj, rope)
                if i in rank:
                    h = h + hint(rank[i]) * scales[rank[i]]
            return h

        x = run(x, 0, None) if blocks_hook is None else blocks_hook(x, run, len(self.blocks))
        return self._head(x, temb, hidden_states.shape)
