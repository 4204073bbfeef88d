"""Tiny random Wan models written in ComfyUI's single-file formats (test-only: torch, diffusers, transformers).

Each file has the key layout of the ComfyUI repackaged file it stands in for, so the loaders find its
format by its keys as they would the real one:

- diffusion models: the original Wan names under `model.diffusion_model.` (fp16 files) or with fp8 e4m3
  weights and per-tensor `scale_weight`s plus the `scaled_fp8` marker (fp8_scaled files); dim 128 (one
  128-wide head, as ComfyUI derives heads = dim // 128);
- text encoder: transformers' UMT5 names plus the sentencepiece tokenizer as a uint8 `spiece_model`;
- VAEs: the original Wan2.1 / Wan2.2 VAE names; CLIP vision: transformers' CLIPVisionModelWithProjection
  (its config.json beside it: a tiny tower's head count is in no tensor);
- LoRAs: ComfyUI's `diffusion_model.<module>.lora_down / lora_up / alpha`.

The torch modules are kept (with the exact values the files hold) so tests can compute references.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

DIM = 128
TEXT_DIM = 32          # the tiny UMT5's d_model (the real one is 4096)
CLIP_HIDDEN = 64
CLIP_IMAGE = 32
CLIP_TOKENS = (CLIP_IMAGE // 8) ** 2 + 1

TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=DIM, in_channels=16,
                   out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=256, num_layers=2, cross_attn_norm=True,
                   eps=1e-6, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
KINDS = {
    "t2v": {},
    "i2v": dict(in_channels=36, image_dim=CLIP_HIDDEN, added_kv_proj_dim=DIM),
    "flf2v": dict(in_channels=36, image_dim=CLIP_HIDDEN, added_kv_proj_dim=DIM, pos_embed_seq_len=2 * CLIP_TOKENS),
    "i2v_a14b": dict(in_channels=36),                 # Wan2.2 A14B I2V experts: no CLIP branch
    "ti2v": dict(in_channels=48, out_channels=48),
    "vace": dict(vace_layers=[0], vace_in_channels=96),
}
VAE21 = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
             temperal_downsample=[False, True, True])
VAE22 = dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
             temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
             scale_factor_spatial=16)
UMT5 = dict(d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
CLIP = dict(hidden_size=CLIP_HIDDEN, intermediate_size=128, num_hidden_layers=3, num_attention_heads=1, patch_size=8,
            image_size=CLIP_IMAGE, projection_dim=16, hidden_act="gelu")
CORPUS = ["a fox moving quickly in a beautiful winter scenery nature trees mountains daytime tracking camera",
          "a red fox in the snow", "the cat sat on the mat", "low quality, blurry, static, worst quality",
          "an icicle dragon lunges forward", "a girl is dancing in a sea of flowers"]


def _randomize(module, seed: int, scale: float = 0.1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


def train_spiece(vocab_size: int = 160) -> bytes:
    """A small T5-style sentencepiece model (pad 0, </s> 1, unk 2), trained on the fly."""
    import sentencepiece as spm
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=out, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


def build_transformer(kind: str, seed: int = 0):
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
    cfg = {**TRANSFORMER, **KINDS[kind]}
    cls = WanVACETransformer3DModel if "vace_layers" in cfg else WanTransformer3DModel
    torch.manual_seed(seed)
    model = _randomize(cls(**cfg), seed + 100)
    if "pos_embed_seq_len" in cfg:
        with torch.no_grad():
            model.condition_embedder.image_embedder.pos_embed.normal_(0, 0.5)
    return model


def write_transformer(model, path: Path, fp8_scaled: bool = False) -> None:
    """ComfyUI's layout; fp16 weights, or fp8 e4m3 block matrices with scale_weight (fp8_scaled)."""
    from nodes.wan.checkpoints.original_format import original_key
    sd = {}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            key = "model.diffusion_model." + original_key(k)
            if fp8_scaled and v.ndim == 2 and k.startswith("blocks."):
                scale = v.abs().max() / 448.0
                q = (v / scale).to(torch.float8_e4m3fn)
                sd[key] = q
                sd[key[:-len(".weight")] + ".scale_weight"] = scale.reshape(1).float()
                v.copy_(q.float() * scale)          # the module keeps the values the file holds
            else:
                v.copy_(v.half().float())
                sd[key] = v.half().contiguous()
        if fp8_scaled:
            sd["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    save_file(sd, str(path))


def build_vae(wan22: bool = False, seed: int = 1):
    from diffusers import AutoencoderKLWan
    from nodes.wan.checkpoints.presets import (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN,
                                               WAN22_LATENTS_STD)
    cfg = VAE22 if wan22 else VAE21
    mean, std = (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD) if wan22 else (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD)
    torch.manual_seed(seed)
    return _randomize(AutoencoderKLWan(**cfg, latents_mean=mean, latents_std=std), seed + 100, 0.05)


def write_vae(vae, path: Path) -> None:
    from nodes.wan.checkpoints.original_format import vae_key_map
    key = vae_key_map(vae.config.num_res_blocks, residual=bool(vae.config.is_residual))
    save_file({key(k): v.contiguous() for k, v in vae.state_dict().items()}, str(path))


def build_text_encoder(spiece: bytes, seed: int = 2):
    import sentencepiece as spm
    from transformers import UMT5Config, UMT5EncoderModel
    vocab = spm.SentencePieceProcessor(model_proto=spiece).get_piece_size()
    torch.manual_seed(seed)
    return _randomize(UMT5EncoderModel(UMT5Config(vocab_size=vocab, **UMT5)), seed + 100, 0.5)


def write_text_encoder(encoder, spiece: bytes, path: Path) -> None:
    """fp16 weights (ComfyUI's umt5_xxl_fp16 layout; also stands in for the fp8_scaled file) + spiece_model."""
    sd = {}
    with torch.no_grad():
        for k, v in encoder.state_dict().items():
            if k == "encoder.embed_tokens.weight":
                continue
            v.copy_(v.half().float())
            sd[k] = v.half().contiguous()
    sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8).clone()
    save_file(sd, str(path))


def build_clip_vision(seed: int = 3):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(seed)
    return _randomize(CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP)), seed + 100, 0.05)


def write_clip_vision(model, path: Path) -> None:
    """transformers' names, as clip_vision_h. A tiny tower's head count and activation are in no tensor (the
    real file's are those of ViT-H/14), so its config.json goes beside it, as in a transformers folder."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}, str(path))
    model.config.to_json_file(str(path.parent / "config.json"))


def write_lora(path: Path, rank: int = 4, seed: int = 4, modules=("blocks.0.self_attn.q", "blocks.1.ffn.0"),
               shapes=None) -> dict:
    """A ComfyUI-format LoRA; returns {module: (down, up, alpha)} for references."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"blocks.0.self_attn.q": (DIM, DIM), "blocks.1.ffn.0": (TRANSFORMER["ffn_dim"], DIM)}
    sd, parts = {}, {}
    for m in modules:
        out_f, in_f = shapes[m]
        down = torch.randn(rank, in_f, generator=g) * 0.1
        up = torch.randn(out_f, rank, generator=g) * 0.1
        sd[f"diffusion_model.{m}.lora_down.weight"] = down
        sd[f"diffusion_model.{m}.lora_up.weight"] = up
        sd[f"diffusion_model.{m}.alpha"] = torch.tensor(float(rank) / 2)
        parts[m] = (down, up, rank / 2)
    save_file(sd, str(path))
    return parts


@dataclass
class ComfyModels:
    """A models folder in ComfyUI's layout and the torch modules behind its files."""
    root: Path
    spiece: bytes = b""
    modules: dict = field(default_factory=dict)


# The file names the templates ask for, by what they hold.
TRANSFORMER_FILES = {
    "wan2.1_t2v_1.3B_fp16.safetensors": ("t2v", False),
    "wan2.1_i2v_480p_14B_fp16.safetensors": ("i2v", False),
    "wan2.1_flf2v_720p_14B_fp16.safetensors": ("flf2v", False),
    "wan2.1_vace_14B_fp16.safetensors": ("vace", False),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": ("t2v", True),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": ("t2v", True),
    "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": ("i2v_a14b", True),
    "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": ("i2v_a14b", True),
    "wan2.2_ti2v_5B_fp16.safetensors": ("ti2v", False),
}
TEXT_FILES = ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "umt5_xxl_fp16.safetensors")
LORA_FILES = ("wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
              "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors",
              "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
              "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
              "Wan21_CausVid_14B_T2V_lora_rank32.safetensors")


def write_models_folder(root: Path, transformers=tuple(TRANSFORMER_FILES)) -> ComfyModels:
    """Every file the shipped templates name (the given transformers only), under root/<kind>/."""
    root = Path(root)
    for sub in ("diffusion_models", "text_encoders", "vae", "clip_vision", "loras"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    models = ComfyModels(root, train_spiece())
    for i, name in enumerate(transformers):
        kind, fp8 = TRANSFORMER_FILES[name]
        model = build_transformer(kind, seed=10 * i)
        write_transformer(model, root / "diffusion_models" / name, fp8_scaled=fp8)
        models.modules[name] = model
    encoder = build_text_encoder(models.spiece)
    for name in TEXT_FILES:
        write_text_encoder(encoder, models.spiece, root / "text_encoders" / name)
    models.modules["umt5"] = encoder
    for name, wan22 in (("wan_2.1_vae.safetensors", False), ("wan2.2_vae.safetensors", True)):
        vae = build_vae(wan22)
        write_vae(vae, root / "vae" / name)
        models.modules[name] = vae
    clip = build_clip_vision()
    write_clip_vision(clip, root / "clip_vision" / "clip_vision_h.safetensors")
    models.modules["clip_vision_h.safetensors"] = clip
    for i, name in enumerate(LORA_FILES):
        models.modules[name] = write_lora(root / "loras" / name, seed=i)
    return models


def tiny_image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image [h, w, 3] in 0..1 (uint8 levels, as a file holds)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)),
                    np.sin(4 * (x + y) + rng.uniform(0, 6))], -1) * 0.45 + 0.5
    return np.round(img * 255) / 255.0


_SHARED: dict = {}


def shared_models(tmp_path_factory) -> ComfyModels:
    """One models folder with every template file, written once per test session (both comfy test modules
    use it; the writing takes seconds)."""
    if "models" not in _SHARED:
        _SHARED["models"] = write_models_folder(tmp_path_factory.mktemp("comfy-models"))
    return _SHARED["models"]
