"""Builds tiny diffusers Wan pipelines (test-only: torch, diffusers, transformers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_UMT5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build_tiny_wan_pipeline(folder: Path, scheduler: str = "unipc", shift: float = 3.0, seed: int = 0):
    """A random tiny WanPipeline saved in the diffusers layout; returns the pipeline."""
    import torch
    from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                           WanPipeline, WanTransformer3DModel)
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    from nodes.wan.presets import _write_tokenizer

    folder = Path(folder)
    tok_dir = folder.parent / f"{folder.name}-tokenizer-src"
    vocab = _write_tokenizer(tok_dir)
    tokenizer = T5TokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"), pad_token="<pad>",
                                eos_token="</s>", unk_token="<unk>", extra_ids=0)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**TINY_TRANSFORMER)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(**TINY_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=vocab, **TINY_UMT5)).eval()
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                        flow_shift=shift)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=sched)
    pipe.save_pretrained(folder)
    return pipe


def reference_frames(pipe, prompt, negative_prompt, noise: np.ndarray, height, width, num_frames, steps, guidance):
    import torch
    with torch.no_grad():
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                   num_frames=num_frames, num_inference_steps=steps, guidance_scale=guidance,
                   latents=torch.from_numpy(noise), output_type="np")
    return np.asarray(out.frames)
