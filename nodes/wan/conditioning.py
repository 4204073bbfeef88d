"""Prompt embeddings and the text-encoder bundle that makes them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import mindspore as ms


@dataclass(frozen=True)
class WanConditioning:
    """What the transformer is conditioned on besides the latents.

    `embeds` [B, 512, text_dim] (rows past the prompt are zeros); `image_embeds`
    are CLIP tokens for Wan2.1 I2V/FLF2V; `extras` carries concat latents,
    masks or VACE context for the pipelines that use them.
    """
    embeds: ms.Tensor
    image_embeds: ms.Tensor | None = None
    extras: dict = field(default_factory=dict)
    prompt: str | None = None

    def cache_nbytes(self) -> int:
        n = int(self.embeds.nbytes)
        if self.image_embeds is not None:
            n += int(self.image_embeds.nbytes)
        return n


@dataclass(frozen=True)
class WanTextEncoder:
    """UMT5 encoder + its tokenizer."""
    encoder: object
    tokenizer: object
    max_length: int = 512

    def encode(self, prompts: str | list[str]) -> WanConditioning:
        from .prompt import encode_prompt
        single = isinstance(prompts, str)
        embeds = encode_prompt(self.encoder, self.tokenizer, [prompts] if single else list(prompts),
                               max_length=self.max_length)
        return WanConditioning(embeds=embeds, prompt=prompts if single else None)

    def cache_nbytes(self) -> int:
        return sum(int(np.prod(p.shape)) * p.itemsize for p in self.encoder.get_parameters())
