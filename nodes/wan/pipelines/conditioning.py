"""Prompt embeddings and the text-encoder bundle that makes them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import mindspore as ms

from ..models.transformer_block import TEXT_TOKENS


# `extras` keys of image-to-video conditioning (see image_to_video.py):
CONCAT_LATENTS = "concat_latents"      # Wan2.1/2.2 I2V, FLF2V: channels appended to the model input
FIRST_FRAME_LATENTS = "first_frame_latents"   # TI2V-5B: the encoded start image [B, z, 1, h, w]
FIRST_FRAME_MASK = "first_frame_mask"         # TI2V-5B: [1, 1, T', h, w], 0 on the given frame


@dataclass(frozen=True)
class WanConditioning:
    """What the transformer is conditioned on besides the latents.

    `embeds` [B, L, text_dim], L the encoder's `max_length` (512 in every Wan pipeline; rows past
    the prompt are zeros); `image_embeds` are CLIP tokens for Wan2.1 I2V/FLF2V; `extras` carries
    concat latents, masks or VACE context for the pipelines that use them.
    """
    embeds: ms.Tensor
    image_embeds: ms.Tensor | None = None
    extras: dict = field(default_factory=dict)
    prompt: str | None = None

    def cache_nbytes(self) -> int:
        n = int(self.embeds.nbytes)
        if self.image_embeds is not None:
            n += int(self.image_embeds.nbytes)
        return n + sum(int(getattr(v, "nbytes", 0)) for v in self.extras.values())

    def with_image(self, image_embeds=None, **extras) -> "WanConditioning":
        """A copy carrying image conditioning; the text part is shared, not copied.

        Models with CLIP image tokens (Wan2.1 I2V / FLF2V) tell them from the text tokens by
        position, the text part being TEXT_TOKENS (512) long as in diffusers, whose image-to-video
        pipeline always encodes 512 tokens: other text lengths are refused here."""
        embeds = self.image_embeds if image_embeds is None else image_embeds
        if embeds is not None and int(self.embeds.shape[1]) != TEXT_TOKENS:
            raise ValueError(f"image tokens (CLIP) need text conditioning of {TEXT_TOKENS} tokens, as diffusers' "
                             f"image-to-video pipeline encodes it; this prompt was encoded with "
                             f"max_length={int(self.embeds.shape[1])}: encode it with max_length={TEXT_TOKENS} "
                             f"(WanTextEncode's max_length input)")
        return replace(self, image_embeds=embeds, extras={**self.extras, **extras})

    @property
    def concat_latents(self):
        """[B, 4 + z, T', h, w] mask + image latents the I2V models take after the noisy latents."""
        return self.extras.get(CONCAT_LATENTS)

    @property
    def concat_channels(self) -> int:
        c = self.concat_latents
        return 0 if c is None else int(c.shape[1])


# Text tokens every Wan pipeline encodes (diffusers' max_sequence_length default; its image-to-video
# pipeline always uses it).
MAX_LENGTH = 512


@dataclass(frozen=True)
class WanTextEncoder:
    """UMT5 encoder + its tokenizer."""
    encoder: object
    tokenizer: object

    def encode(self, prompts: str | list[str], max_length: int = MAX_LENGTH) -> WanConditioning:
        """Embeddings [B, max_length, D] as diffusers' `_get_t5_prompt_embeds(max_sequence_length=...)`:
        the prompt's tokens (EOS included), zeros past them. The zero rows still go through the
        transformer's text embedder and un-masked cross-attention, so `max_length` changes the video."""
        from .prompt import encode_prompt
        single = isinstance(prompts, str)
        embeds = encode_prompt(self.encoder, self.tokenizer, [prompts] if single else list(prompts),
                               max_length=max_length)
        return WanConditioning(embeds=embeds, prompt=prompts if single else None)

    def cache_nbytes(self) -> int:
        if hasattr(self.encoder, "resident_nbytes"):    # what it holds now (a streamed encoder: little)
            return int(self.encoder.resident_nbytes())
        return sum(int(np.prod(p.shape)) * p.itemsize for p in self.encoder.get_parameters())
