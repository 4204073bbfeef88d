"""Builds tiny diffusers Wan pipelines (test-only: torch, diffusers, transformers)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def torch_one_thread():
    """Run the reference on one torch thread: beside MindSpore's own thread pool on this 2-core VM, torch's
    default two threads made a tiny pipeline call 5-15x slower (2.4-9 s vs 0.5 s); results agree within 1e-6."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_UMT5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build_tiny_wan_pipeline(folder: Path, scheduler: str = "unipc", shift: float = 3.0, seed: int = 0,
                            boundary_ratio: float | None = None):
    """A random tiny WanPipeline saved in the diffusers layout; returns the pipeline.

    `boundary_ratio` set: Wan2.2 A14B style, a second expert `transformer_2` (low noise) of other
    random weights takes the steps with timestep < boundary_ratio · 1000."""
    import torch
    from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                           WanPipeline, WanTransformer3DModel)
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    from nodes.wan.checkpoints.presets import _write_tokenizer

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
    transformer_2 = None
    if boundary_ratio is not None:
        torch.manual_seed(seed + 10)
        transformer_2 = WanTransformer3DModel(**TINY_TRANSFORMER)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=sched,
                       transformer_2=transformer_2, boundary_ratio=boundary_ratio)
    pipe.save_pretrained(folder)
    return pipe


TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, patch_size=4,
                 image_size=16, projection_dim=8, hidden_act="gelu")
CLIP_TOKENS = (16 // 4) ** 2 + 1
TINY_VAE22 = dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                  temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                  patch_size=2, scale_factor_spatial=16)
# The image-to-video variants: transformer changes, and what the pipeline adds.
I2V_KINDS = {
    "wan21": dict(transformer=dict(in_channels=36, image_dim=16, added_kv_proj_dim=24), clip=True),
    "flf2v": dict(transformer=dict(in_channels=36, image_dim=16, added_kv_proj_dim=24,
                                   pos_embed_seq_len=2 * CLIP_TOKENS), clip=True),
    "wan22": dict(transformer=dict(in_channels=36), clip=False, boundary_ratio=0.9),
    "ti2v": dict(transformer=dict(in_channels=48, out_channels=48), clip=False, expand_timesteps=True, vae22=True),
}


def _tiny_tokenizer_and_encoder(folder: Path, seed: int):
    import torch
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    from nodes.wan.checkpoints.presets import _write_tokenizer

    tok_dir = folder.parent / f"{folder.name}-tokenizer-src"
    vocab = _write_tokenizer(tok_dir)
    tokenizer = T5TokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"), pad_token="<pad>",
                                eos_token="</s>", unk_token="<unk>", extra_ids=0)
    torch.manual_seed(seed)
    return tokenizer, UMT5EncoderModel(UMT5Config(vocab_size=vocab, **TINY_UMT5)).eval()


def build_tiny_wan_i2v_pipeline(folder: Path, kind: str = "wan21", shift: float = 3.0, seed: int = 0):
    """A random tiny WanImageToVideoPipeline (`kind` in I2V_KINDS) saved in the diffusers layout."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    spec = I2V_KINDS[kind]
    folder = Path(folder)
    tokenizer, text_encoder = _tiny_tokenizer_and_encoder(folder, seed + 2)
    config = {**TINY_TRANSFORMER, **spec["transformer"]}
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**config)
    if "pos_embed_seq_len" in config:   # zeros at init: make the FLF2V position embedding matter
        with torch.no_grad():
            transformer.condition_embedder.image_embedder.pos_embed.normal_(0, 0.5)
    transformer_2 = None
    if spec.get("boundary_ratio"):
        torch.manual_seed(seed + 10)
        transformer_2 = WanTransformer3DModel(**config)
    torch.manual_seed(seed + 1)
    if spec.get("vae22"):
        rng = np.random.default_rng(seed)
        vae = AutoencoderKLWan(**TINY_VAE22, latents_mean=rng.normal(0, 0.2, 48).tolist(),
                               latents_std=rng.uniform(0.5, 1.5, 48).tolist())
    else:
        vae = AutoencoderKLWan(**TINY_VAE)
    image_encoder = image_processor = None
    if spec["clip"]:
        torch.manual_seed(seed + 3)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).eval()
        image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                             do_center_crop=True, resample=3)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                    flow_shift=shift)
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched,
                                   image_processor=image_processor, image_encoder=image_encoder,
                                   transformer=transformer, transformer_2=transformer_2,
                                   boundary_ratio=spec.get("boundary_ratio"),
                                   expand_timesteps=spec.get("expand_timesteps", False))
    pipe.save_pretrained(folder)
    return pipe


def reference_i2v_frames(pipe, image, prompt, negative_prompt, noise: np.ndarray, height, width, num_frames, steps,
                         guidance, last_image=None, guidance_2=None):
    import torch
    extra = {} if guidance_2 is None else {"guidance_scale_2": guidance_2}
    with torch.no_grad(), torch_one_thread():
        out = pipe(image=image, last_image=last_image, prompt=prompt, negative_prompt=negative_prompt,
                   height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                   guidance_scale=guidance, latents=torch.from_numpy(noise), output_type="np", **extra)
    return np.asarray(out.frames)


def reference_frames(pipe, prompt, negative_prompt, noise: np.ndarray, height, width, num_frames, steps, guidance):
    import torch
    with torch.no_grad(), torch_one_thread():
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                   num_frames=num_frames, num_inference_steps=steps, guidance_scale=guidance,
                   latents=torch.from_numpy(noise), output_type="np")
    return np.asarray(out.frames)


def reference_outputs(pipe, noise: np.ndarray, **call) -> tuple[np.ndarray, np.ndarray]:
    """(frames [B, F, H, W, 3], final latents) of any diffusers Wan pipeline for the same call, the
    latents being its `output_type="latent"` result (normalised; VACE: reference frames not trimmed)."""
    import torch
    with torch.no_grad(), torch_one_thread():
        frames = pipe(latents=torch.from_numpy(noise), output_type="np", **call).frames
        latents = pipe(latents=torch.from_numpy(noise), output_type="latent", **call).frames
    return np.asarray(frames), latents.float().numpy()


def load_image_node(g, path):
    """A LoadImage node reading `path`, whichever signature LoadImage has (ComfyUI's `image`, or `path`);
    its output 0 is the IMAGE."""
    from graphrt.registry import get_node_class
    names = get_node_class("LoadImage").input_map()
    return g.node("LoadImage", **{("image" if "image" in names else "path"): str(path)})
