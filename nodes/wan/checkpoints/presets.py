"""The built-in `tiny` Wan preset: a complete text-to-video pipeline folder in
the diffusers layout (transformer, VAE, UMT5 encoder, tokenizer, scheduler)
at toy sizes, with weights drawn deterministically from a fixed seed.

It needs no download: the folder is generated on first use and cached under
`$GRAPHRT_HOME/presets` (default `~/.cache/graphrt/presets`). Its videos are
noise-like because the weights are random; it exists to run and test every
code path of a real model in seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np

from ..backend.runtime import to_ms_dtype
from .safetensors_io import save_file

PRESET_VERSION = 1
SEED = 20251124

WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

# The Wan2.2 VAE's (TI2V-5B) per-channel latent statistics, as its diffusers config carries them.
WAN22_LATENTS_MEAN = [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
                      0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
                      -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
                      -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
                      0.3573, -0.0548, -0.1681, -0.0667]
WAN22_LATENTS_STD = [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                     0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                     0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                     0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]

_WORDS = ("a the of and in on with at to is fox cat dog bird tree forest city street river sea sky sun "
          "moon night day rain snow red green blue white black small big running walking flying "
          "video camera slow motion close up wide shot beautiful light dark water fire mountain").split()


def _configs(vocab_size: int) -> dict:
    return {
        "transformer": {
            "_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 2,
            "attention_head_dim": 32, "in_channels": 16, "out_channels": 16, "text_dim": 32, "freq_dim": 32,
            "ffn_dim": 128, "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
            "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
            "pos_embed_seq_len": None},
        "vae": {
            "_class_name": "AutoencoderKLWan", "base_dim": 16, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 1, "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
            "latents_mean": WAN21_LATENTS_MEAN, "latents_std": WAN21_LATENTS_STD, "is_residual": False,
            "in_channels": 3, "out_channels": 3, "patch_size": None, "scale_factor_temporal": 4,
            "scale_factor_spatial": 8},
        "text_encoder": {
            "architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": 32, "d_kv": 16, "d_ff": 64,
            "num_layers": 2, "num_heads": 2, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "vocab_size": vocab_size,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0},
        "scheduler": {
            "_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
            "use_flow_sigmas": True, "flow_shift": 3.0, "solver_order": 2, "solver_type": "bh2", "predict_x0": True,
            "lower_order_final": True, "final_sigmas_type": "zero", "timestep_spacing": "linspace",
            "disable_corrector": [], "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    }


def _write_tokenizer(folder: Path) -> int:
    """A small Unigram tokenizer in T5's shape (pad 0, </s> 1, unk 2, Metaspace)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -4.0 - i * 0.01) for i, w in enumerate(_WORDS)]
    vocab += [(c, -8.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁" + c, -7.5) for c in string.ascii_lowercase]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 512, "extra_ids": 0}, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))
    return tok.get_vocab_size()


def _init_value(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Plausible random weights: unit norm scales, zero biases, fan-in scaled matrices."""
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1 or leaf == "gamma":
        if leaf in ("gamma",) or ("norm" in name and leaf == "weight"):
            return np.ones(shape, np.float32)
        return np.zeros(shape, np.float32) if leaf == "bias" else rng.standard_normal(shape).astype(np.float32) * 0.02
    if "scale_shift_table" in name:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    if name.endswith("shared.weight") or "relative_attention_bias" in name:
        return rng.standard_normal(shape).astype(np.float32) * 0.5
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _write_component(folder: Path, cls, config: dict, rng: np.random.Generator) -> None:
    model = cls.from_config(config, dtype=to_ms_dtype("float32"))
    tensors = {name: _init_value(name, tuple(p.shape), rng)
               for name, p in sorted(model.parameters_and_names(), key=lambda kv: kv[0])}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, folder / f"{cls.WEIGHTS_NAME}.safetensors", metadata={"format": "pt"})


def build_tiny_pipeline(folder: Path) -> None:
    from ..models.transformer import WanTransformer3DModel
    from ..models.umt5 import UMT5EncoderModel
    from ..models.vae import AutoencoderKLWan

    vocab_size = _write_tokenizer(folder / "tokenizer")
    cfg = _configs(vocab_size)
    rng = np.random.default_rng(SEED)
    _write_component(folder / "transformer", WanTransformer3DModel, cfg["transformer"], rng)
    _write_component(folder / "vae", AutoencoderKLWan, cfg["vae"], rng)
    _write_component(folder / "text_encoder", UMT5EncoderModel, cfg["text_encoder"], rng)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg["scheduler"], indent=2))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "_graphrt_preset": f"tiny-v{PRESET_VERSION}",
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "boundary_ratio": None,
        "expand_timesteps": False}, indent=2))


def presets_home() -> Path:
    return Path(os.environ.get("GRAPHRT_HOME", Path.home() / ".cache" / "graphrt")) / "presets"


def tiny_pipeline_path() -> Path:
    """The tiny preset's folder, generated (once, atomically) if absent."""
    final = presets_home() / f"tiny-v{PRESET_VERSION}"
    if (final / "model_index.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=final.parent))
    try:
        build_tiny_pipeline(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not (final / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
