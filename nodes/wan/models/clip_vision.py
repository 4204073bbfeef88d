"""The CLIP vision tower Wan2.1 I2V/FLF2V use (transformers' CLIPVisionModel[WithProjection]),
and its image preprocessing (transformers' CLIPImageProcessor), on MindSpore + PIL.

Wan uses the penultimate hidden states (all tokens, CLS included), so the
forward stops one layer early; the last layer's weights are still loaded and
checked so a checkpoint either fits entirely or is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import Parameter, mint, nn, ops

from .attention import attention
from .images import as_uint8
from .layers import param_init, LayerNorm, Linear, gelu_exact


def quick_gelu(x):
    return x * mint.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": gelu_exact, "quick_gelu": quick_gelu}


class _Attention(nn.Cell):
    def __init__(self, dim, heads, dtype):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = Linear(dim, dim, dtype=dtype), Linear(dim, dim, dtype=dtype)
        self.v_proj, self.out_proj = Linear(dim, dim, dtype=dtype), Linear(dim, dim, dtype=dtype)

    def construct(self, x):
        b, l, d = x.shape
        split = lambda t: t.reshape(b, l, self.heads, d // self.heads).swapaxes(1, 2)
        out = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), use_fused=False)
        return self.out_proj(out.swapaxes(1, 2).reshape(b, l, d))


class _MLP(nn.Cell):
    def __init__(self, dim, inner, act, dtype):
        super().__init__()
        self.fc1, self.fc2 = Linear(dim, inner, dtype=dtype), Linear(inner, dim, dtype=dtype)
        self.act = ACTIVATIONS[act]

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Cell):
    def __init__(self, dim, heads, inner, act, eps, dtype):
        super().__init__()
        self.self_attn = _Attention(dim, heads, dtype)
        self.layer_norm1 = LayerNorm(dim, eps, dtype=dtype)
        self.mlp = _MLP(dim, inner, act, dtype)
        self.layer_norm2 = LayerNorm(dim, eps, dtype=dtype)

    def construct(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Cell):
    def __init__(self, dim, patch, image_size, channels, dtype):
        super().__init__()
        self.patch, self.dim = patch, dim
        n = (image_size // patch) ** 2 + 1
        self.class_embedding = Parameter(param_init("zeros", (dim,), dtype), name="class_embedding")
        self.patch_embedding = _PatchConv(dim, channels, patch, dtype)
        self.position_embedding = _Table(n, dim, dtype)

    def construct(self, pixels):
        x = self.patch_embedding(pixels)                              # [B, N, D]
        cls = mint.broadcast_to(self.class_embedding.reshape(1, 1, -1), (x.shape[0], 1, self.dim))
        return mint.cat([cls.astype(x.dtype), x], dim=1) + self.position_embedding.weight.unsqueeze(0)


class _PatchConv(nn.Cell):
    """Conv2d, kernel == stride, no bias: one matmul over the patches."""

    def __init__(self, dim, channels, patch, dtype):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.weight = Parameter(param_init("zeros", (dim, channels, patch, patch), dtype), name="weight")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * p * p)
        return self.matmul(x, self.weight.reshape(self.dim, -1)).reshape(b, -1, self.dim)


class _Table(nn.Cell):
    def __init__(self, n, dim, dtype):
        super().__init__()
        self.weight = Parameter(param_init("zeros", (n, dim), dtype), name="weight")


class _Encoder(nn.Cell):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.layers = nn.CellList([_Layer(cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"],
                                          cfg["hidden_act"], cfg["layer_norm_eps"], dtype)
                                   for _ in range(cfg["num_hidden_layers"])])


class _VisionModel(nn.Cell):
    def __init__(self, cfg, dtype):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.embeddings = _Embeddings(d, cfg["patch_size"], cfg["image_size"], cfg["num_channels"], dtype)
        self.pre_layrnorm = LayerNorm(d, eps, dtype=dtype)
        self.encoder = _Encoder(cfg, dtype)
        self.post_layernorm = LayerNorm(d, eps, dtype=dtype)


class CLIPVisionModel(nn.Cell):
    WEIGHTS_NAME = "model"
    KEEP_FP32 = ()
    IGNORE_UNEXPECTED = ("visual_projection.", "position_ids")
    DEFAULTS = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    patch_size=14, image_size=224, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5)

    def __init__(self, config: dict, dtype=ms.float32):
        super().__init__()
        cfg = dict(config.get("vision_config", config))
        cfg = {**self.DEFAULTS, **{k: v for k, v in cfg.items() if k in self.DEFAULTS}}
        if cfg["hidden_act"] not in ACTIVATIONS:
            raise ValueError(f"CLIP hidden_act {cfg['hidden_act']!r} is not supported ({sorted(ACTIVATIONS)})")
        self.cfg, self.config, self.dtype = cfg, dict(config), dtype
        self.vision_model = _VisionModel(cfg, dtype)

    @staticmethod
    def key_map_for(keys):
        """transformers saves CLIPVisionModel without the `vision_model.` prefix
        and CLIPVisionModelWithProjection with it; accept both."""
        if "vision_model.embeddings.class_embedding" in keys or "embeddings.class_embedding" not in keys:
            return None
        return lambda name: name[len("vision_model."):] if name.startswith("vision_model.") else name

    @classmethod
    def from_config(cls, config: dict, dtype=ms.float32) -> "CLIPVisionModel":
        return cls(config, dtype=dtype)

    def construct(self, pixel_values):
        """Penultimate hidden states [B, 1 + (224/14)^2, D] (transformers' hidden_states[-2])."""
        vm = self.vision_model
        x = pixel_values if isinstance(pixel_values, ms.Tensor) else ms.Tensor(np.asarray(pixel_values, np.float32))
        x = vm.pre_layrnorm(vm.embeddings(x.astype(self.dtype)))
        for layer in list(vm.encoder.layers)[:-1]:
            x = layer(x)
        return x


class CLIPImageProcessor:
    """Shortest-edge bicubic resize, center crop, rescale, normalise (transformers' slow processor)."""

    def __init__(self, size: int = 224, crop_size: int = 224, image_mean=(0.48145466, 0.4578275, 0.40821073),
                 image_std=(0.26862954, 0.26130258, 0.27577711), rescale_factor: float = 1 / 255, resample: int = 3,
                 do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True):
        self.size, self.crop_size, self.resample = size, crop_size, resample
        self.mean = np.array(image_mean, np.float32)
        self.std = np.array(image_std, np.float32)
        self.rescale_factor = rescale_factor
        self.flags = (do_resize, do_center_crop, do_rescale, do_normalize)

    @classmethod
    def from_pretrained(cls, folder) -> "CLIPImageProcessor":
        path = Path(folder) / "preprocessor_config.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder} has no preprocessor_config.json")
        c = json.loads(path.read_text())
        size = c.get("size", 224)
        size = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, dict) else size
        crop = c.get("crop_size", size)
        crop = crop.get("height", 224) if isinstance(crop, dict) else crop
        return cls(size=size, crop_size=crop, image_mean=c.get("image_mean", (0.48145466, 0.4578275, 0.40821073)),
                   image_std=c.get("image_std", (0.26862954, 0.26130258, 0.27577711)),
                   rescale_factor=c.get("rescale_factor", 1 / 255), resample=c.get("resample", 3),
                   do_resize=c.get("do_resize", True), do_center_crop=c.get("do_center_crop", True),
                   do_rescale=c.get("do_rescale", True), do_normalize=c.get("do_normalize", True))

    def _one(self, image) -> np.ndarray:
        from PIL import Image
        if not isinstance(image, Image.Image):
            arr = np.asarray(image)
            if arr.dtype != np.uint8:  # float frames in 0..1 (IMAGE sockets)
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(arr)
        image = image.convert("RGB")
        do_resize, do_crop, do_rescale, do_norm = self.flags
        if do_resize:
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.size * long / short)
            nw, nh = (self.size, new_long) if w <= h else (new_long, self.size)
            image = image.resize((nw, nh), resample=self.resample)
        arr = np.asarray(image)
        if do_crop:
            h, w = arr.shape[:2]
            c = self.crop_size
            if h < c or w < c:
                pad = np.zeros((max(h, c), max(w, c), 3), arr.dtype)
                top, left = (pad.shape[0] - h) // 2, (pad.shape[1] - w) // 2
                pad[top:top + h, left:left + w] = arr
                arr, h, w = pad, pad.shape[0], pad.shape[1]
            top, left = (h - c) // 2, (w - c) // 2
            arr = arr[top:top + c, left:left + c]
        out = arr.astype(np.float64) * self.rescale_factor if do_rescale else arr.astype(np.float64)
        out = out.astype(np.float32)
        if do_norm:
            out = (out - self.mean) / self.std
        return out.transpose(2, 0, 1)

    def __call__(self, images) -> np.ndarray:
        """float32 [N, 3, crop, crop] from PIL images or [H, W, 3] arrays (uint8 or float 0..1)."""
        if not isinstance(images, (list, tuple)):
            images = [images] if not (isinstance(images, np.ndarray) and images.ndim == 4) else list(images)
        return np.stack([self._one(im) for im in images]).astype(np.float32)


@dataclass(frozen=True)
class WanCLIPVision:
    """The CLIP vision tower and its preprocessing: images → penultimate hidden states."""
    encoder: object
    processor: object

    def encode(self, images) -> ms.Tensor:
        """[N, tokens, D] for a list of images or an IMAGE batch [N, H, W, 3]."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = [images[i] for i in range(images.shape[0])]
        elif not isinstance(images, (list, tuple)):
            images = [images]
        pixels = self.processor([np.asarray(as_uint8(im)) if not hasattr(im, "convert") else im for im in images])
        return self.encoder(ms.Tensor(pixels).astype(self.encoder.dtype)).astype(ms.float32)

    def cache_nbytes(self) -> int:
        return sum(int(np.prod(p.shape)) * p.itemsize for p in self.encoder.get_parameters())
