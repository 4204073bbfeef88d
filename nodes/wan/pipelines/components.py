"""A pipeline's parts as the graph's sockets carry them: the denoiser (transformer or Wan2.2
experts with scheduler settings), the text encoder with its tokenizer, the CLIP vision encoder with
its preprocessing. Each takes any source (`checkpoints.source`) and resolves it once."""
from __future__ import annotations

from ..checkpoints.loaders import load_image_encoder, load_image_processor, load_text_encoder, load_tokenizer, \
    load_transformer
from ..checkpoints.source import as_source, read_config
from ..models.clip_vision import CLIPImageProcessor, WanCLIPVision
from ..models.denoiser import WanDenoiser
from .conditioning import WanTextEncoder


# A compile costs ~3 s per latent shape for a real block and repays itself within
# one step; toy models (the `tiny` preset, test configs) are faster left eager.
COMPILE_MIN_DIM = 1024
COMPILE_MODES = ("auto", "on", "off")


def should_compile(transformer, compile: bool | str = "auto") -> bool:
    """`compile`: True/"on", False/"off", or "auto" (every real Wan checkpoint: hidden size ≥ 1024)."""
    if isinstance(compile, bool):
        return compile
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES} or a bool, got {compile!r}")
    return compile == "on" or (compile == "auto" and transformer.dim >= COMPILE_MIN_DIM)


# Wan2.2 A14B experts hand over at this fraction of the training timesteps (the
# -Diffusers repos' model_index.json): T2V 0.875; I2V (36 input channels) 0.9.
A14B_BOUNDARY = {16: 0.875, 36: 0.9}


def load_denoiser(source, dtype="float32", compile: bool | str = "auto", low_noise_source=None,
                  boundary_ratio: float | None = None, config=None) -> WanDenoiser:
    """The transformer(s) of a pipeline folder, with its scheduler and MoE settings; or a
    single-file transformer (original Wan / ComfyUI keys, config inferred), optionally with
    `low_noise_source`, the second expert file of a Wan2.2 A14B model.

    `compile` ("auto", "on"/True, "off"/False) runs the transformer blocks under
    ms.jit: one graph per latent shape shared by all blocks, compiled on first use
    and falling back to eager execution if the device cannot compile it.
    `boundary_ratio` overrides the expert switch point (default: the model's own). `config`
    (a dict, config.json, pipeline folder or hub repo id) overrides what a single file's shapes imply;
    a transformer of other than a released size (hidden size 1536, 3072, 5120) needs it for its head count.
    """
    src = as_source(source)
    if src.is_file:
        t1 = load_transformer(src, dtype=dtype, config=config)
        t2 = load_transformer(low_noise_source, dtype=dtype, config=config) if low_noise_source else None
        index = {}
        # The -Diffusers repos' UniPC flow_shift: 5.0 for TI2V-5B (48 channels), 16.0 for FLF2V
        # (CLIP position embeddings), 3.0 for the rest; the denoise node's `shift` overrides it.
        in_ch = int(t1.config["in_channels"])
        sched = {"flow_shift": 5.0 if in_ch == 48 else 16.0 if t1.config.get("pos_embed_seq_len") else 3.0}
        if t2 is not None:
            index["boundary_ratio"] = A14B_BOUNDARY.get(int(t1.config["in_channels"]), 0.875)
        # TI2V-5B (48 latent channels) takes per-token timesteps, as its -Diffusers model_index says
        index["expand_timesteps"] = in_ch == 48
    else:
        if low_noise_source:
            raise ValueError("low_noise_source is for single-file experts; a pipeline folder brings its own "
                             "transformer_2")
        index = src.model_index()
        t1 = load_transformer(src, "transformer", dtype=dtype, config=config)
        t2 = load_transformer(src, "transformer_2", dtype=dtype, config=config) \
            if src.has_component("transformer_2") else None
        sched = read_config(src.component("scheduler"), "scheduler_config.json") \
            if src.has_component("scheduler") else {}
    for t in (t1, t2):
        if t is not None and should_compile(t, compile):
            t.compile()
    if boundary_ratio is not None:
        if t2 is None:
            raise ValueError("boundary_ratio needs two experts (a Wan2.2 A14B model)")
        index["boundary_ratio"] = float(boundary_ratio)
    return WanDenoiser(transformer=t1, transformer_2=t2, boundary_ratio=index.get("boundary_ratio"),
                       expand_timesteps=bool(index.get("expand_timesteps", False)),
                       scheduler_config=sched, num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
                       name=str(source))


# Where a single-file encoder's tokenizer comes from when none is named (all Wan models share it).
DEFAULT_TOKENIZER_SOURCE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def load_text(source, dtype="float32", tokenizer_source=None, config=None) -> WanTextEncoder:
    """UMT5 encoder + tokenizer of a pipeline folder / repo, or an encoder file (ComfyUI's umt5_xxl_*)
    with the tokenizer of `tokenizer_source` (a pipeline folder or repo id; by default Wan-AI's).
    `config` (a dict, config.json, pipeline folder or hub repo id) overrides what a file's shapes imply."""
    src = as_source(source)
    # a hub repo is fetched one folder at a time: only tokenizer/ for a single-file encoder
    tokenizer = load_tokenizer(tokenizer_source or (DEFAULT_TOKENIZER_SOURCE if src.is_file else src), "tokenizer")
    encoder = load_text_encoder(src, None if src.is_file else "text_encoder", dtype=dtype, config=config)
    return WanTextEncoder(encoder=encoder, tokenizer=tokenizer)


def load_clip_vision(source, dtype="float32", config=None) -> WanCLIPVision:
    """image_encoder/ and image_processor/ of a pipeline folder or hub repo id; or one CLIP vision file
    (Wan-AI's open-clip .pth, ComfyUI's clip_vision_h) with the preprocessing of Wan's diffusers repos:
    shortest edge and center crop to the tower's image size (224), bicubic, OpenAI mean and std.
    `config` (a dict, config.json, folder or hub repo id) overrides what a file's shapes imply: a tower
    other than Wan's 1280-wide ViT-H/14 needs its head count and activation from it."""
    src = as_source(source)
    if src.is_file:
        encoder = load_image_encoder(src, None, dtype=dtype, config=config)
        side = encoder.cfg["image_size"]
        return WanCLIPVision(encoder=encoder, processor=CLIPImageProcessor(size=side, crop_size=side))
    return WanCLIPVision(encoder=load_image_encoder(src, "image_encoder", dtype=dtype, config=config),
                         processor=load_image_processor(src, "image_processor"))
