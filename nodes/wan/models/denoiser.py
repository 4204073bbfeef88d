"""A Wan denoiser: one transformer, or the two experts of Wan2.2 A14B, plus
what the pipelines need to drive them (scheduler config, expert boundary,
per-token timesteps)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import mindspore as ms


@dataclass(frozen=True)
class WanDenoiser:
    transformer: object
    transformer_2: object | None = None
    boundary_ratio: float | None = None      # Wan2.2 A14B: t >= ratio*1000 -> high-noise expert
    expand_timesteps: bool = False            # Wan2.2 TI2V-5B: per-token timesteps
    scheduler_config: dict = field(default_factory=dict)
    num_train_timesteps: int = 1000
    name: str = ""
    # A `pipelines.step_cache.StepCache` every sampler applies to this model (ComfyUI's model-patch
    # style: WanApplyStepCache -> KSampler); None = no step caching unless a sampler is given one.
    step_cache: object = None

    @property
    def config(self) -> dict:
        return self.transformer.config

    @property
    def dtype(self):
        return self.transformer.dtype

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def default_shift(self) -> float:
        return float(self.scheduler_config.get("flow_shift", self.scheduler_config.get("shift", 3.0)) or 3.0)

    def with_(self, **changes) -> "WanDenoiser":
        """A light copy sharing the weights (cached values stay immutable)."""
        return replace(self, **changes)

    def expert_for(self, t) -> tuple[object, int]:
        """(transformer, index) for scheduler timestep t; index 1 is the low-noise expert."""
        if self.transformer_2 is None or self.boundary_ratio is None:
            return self.transformer, 0
        if float(t) >= self.boundary_ratio * self.num_train_timesteps:
            return self.transformer, 0
        return self.transformer_2, 1

    def tokens(self, latents_shape) -> int:
        """Transformer tokens per sample for latents of this shape."""
        _, _, f, h, w = latents_shape
        p = self.config.get("patch_size", (1, 2, 2))
        return (f // p[0]) * (h // p[1]) * (w // p[2])

    def timestep_input(self, t, latents_shape) -> ms.Tensor:
        """The timestep tensor the transformer takes: [B], or [B, tokens] for TI2V."""
        b = latents_shape[0]
        dtype = np.int64 if isinstance(t, (int, np.integer)) else np.float32
        if not self.expand_timesteps:
            return ms.Tensor(np.full((b,), t, dtype=dtype))
        return ms.Tensor(np.full((b, self.tokens(latents_shape)), t, dtype=dtype))

    def cache_nbytes(self) -> int:
        total = 0
        for m in (self.transformer, self.transformer_2):
            if hasattr(m, "loras"):   # a LoRA view: its own memory is the LoRA; the base is cached on its own
                total += sum(lora.cache_nbytes() for lora, _ in m.loras)
            elif hasattr(m, "resident_nbytes"):   # what it holds now: a streamed model's resident part
                total += m.resident_nbytes()
            elif m is not None:
                total += sum(int(np.prod(p.shape)) * p.itemsize for p in m.get_parameters())
        return total
