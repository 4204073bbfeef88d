"""A pipeline's parts as the graph's sockets carry them: the denoiser (transformer or Wan2.2
experts with scheduler settings), the text encoder with its tokenizer, the CLIP vision encoder with
its preprocessing. Each takes any source (`checkpoints.source`) and resolves it once."""
from __future__ import annotations

from ..checkpoints.loaders import auto_offload, build, check, component_nbytes, load_image_processor, \
    load_tokenizer, open_component, open_transformer
from ..checkpoints.source import as_source, read_config
from ..checkpoints.streaming import check_offload
from ..models.clip_vision import CLIPImageProcessor, CLIPVisionModel, WanCLIPVision
from ..models.denoiser import WanDenoiser
from ..models.residency import OnDemand
from ..models.umt5 import UMT5EncoderModel
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
                  boundary_ratio: float | None = None, config=None, offload="none") -> WanDenoiser:
    """The transformer(s) of a pipeline folder, with its scheduler and MoE settings; or a
    single-file transformer (original Wan / ComfyUI keys, config inferred), optionally with
    `low_noise_source`, the second expert file of a Wan2.2 A14B model.

    `compile` ("auto", "on"/True, "off"/False) runs the transformer blocks under
    ms.jit: one graph per latent shape shared by all blocks, compiled on first use
    and falling back to eager execution if the device cannot compile it.
    `boundary_ratio` overrides the expert switch point (default: the model's own). `config`
    (a dict, config.json, pipeline folder or hub repo id) overrides what a single file's shapes imply;
    a transformer of other than a released size (hidden size 1536, 3072, 5120) needs it for its head count.

    `offload` ("none", "blocks", "model", "auto"; see `load_transformer`): with "auto", each expert
    is streamed ("blocks") if it alone does not fit the memory budget; Wan2.2's two experts that
    fit one at a time but not together are widened on first use and released when the other one
    needs the room ("model"), so the two are never both widened.
    """
    src = as_source(source)
    offload = check_offload(offload)
    if src.is_file:
        t1, t2 = _load_experts(src, low_noise_source, (None, None), dtype, config, offload)
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
        t1, t2 = _load_experts(src, src if src.has_component("transformer_2") else None,
                               ("transformer", "transformer_2"), dtype, config, offload)
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


def _load_experts(src, src_2, subfolders, dtype, config, offload):
    """The transformer and, for Wan2.2 A14B, the second expert, each offloaded as `offload` says."""
    cls1, comp1 = open_transformer(src, subfolders[0], config)
    opened = [(cls1, comp1)]
    if src_2 is not None:
        opened.append(open_transformer(src_2, subfolders[1], config))
    modes = [offload] * len(opened)
    if offload == "auto":
        sizes = [component_nbytes(comp, dtype) for _, comp in opened]
        modes = [auto_offload(n, sum(sizes) - n) for n in sizes]
        if len(opened) == 1 and modes[0] == "model":
            modes = ["none"]
    models = [build(cls, comp, dtype, mode) for (cls, comp), mode in zip(opened, modes)]
    return models[0], (models[1] if len(models) > 1 else None)


# Where a single-file encoder's tokenizer comes from when none is named (all Wan models share it).
DEFAULT_TOKENIZER_SOURCE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def _on_demand(cls, comp, dtype, what: str, offload="none"):
    """The component's model, checked now (names and shapes), built on first use and released
    when another model needs the room (`models.residency`): -> (OnDemand, unloaded instance).
    `offload` as `load_text`'s, decided at each build ("auto": against the room then)."""
    shell = check(cls, comp, dtype)
    full = component_nbytes(comp, dtype)
    offload = check_offload(offload) if hasattr(shell, "stream_blocks") else "none"
    mode = [offload]

    def plan() -> int:
        m = offload
        if m == "auto":
            m = auto_offload(full)
            m = "none" if m == "model" else m
        mode[0] = m
        return full if m == "none" else 0     # a stream reserves the room of the blocks it widens

    return OnDemand(lambda: build(cls, comp, dtype, mode[0]), plan, f"{what} {comp.path}"), shell


def load_text(source, dtype="float32", tokenizer_source=None, config=None, offload="auto") -> WanTextEncoder:
    """UMT5 encoder + tokenizer of a pipeline folder / repo, or an encoder file (ComfyUI's umt5_xxl_*)
    with the tokenizer of `tokenizer_source` (a pipeline folder or repo id; by default Wan-AI's).
    `config` (a dict, config.json, pipeline folder or hub repo id) overrides what a file's shapes imply.

    The encoder is checked against its file now and loaded on the first encode; it is released
    when a model needs the room under the memory budget (`models.residency`), and loaded again
    by the next encode that needs it. `offload` (as `load_transformer`'s): "blocks" keeps only
    the final norm and reads each of the 24 blocks from the file as it runs (the next one on a
    background thread) and only the prompt's rows of the token embedding, so UMT5-XXL encodes
    in float32 in about 2 GB instead of 22.8; "auto" does that when the encoder does not fit
    the room left under the memory budget at its first encode."""
    src = as_source(source)
    # a hub repo is fetched one folder at a time: only tokenizer/ for a single-file encoder
    tokenizer = load_tokenizer(tokenizer_source or (DEFAULT_TOKENIZER_SOURCE if src.is_file else src), "tokenizer")
    return WanTextEncoder(encoder=text_encoder_on_demand(src, dtype, config, offload), tokenizer=tokenizer)


def text_encoder_on_demand(source, dtype="float32", config=None, offload="auto") -> OnDemand:
    """The UMT5 encoder alone, held as `load_text` holds it (see there)."""
    src = as_source(source)
    comp = open_component(src, "text_encoder", None if src.is_file else "text_encoder", config)
    return _on_demand(UMT5EncoderModel, comp, dtype, "text encoder", offload)[0]


def load_clip_vision(source, dtype="float32", config=None) -> WanCLIPVision:
    """image_encoder/ and image_processor/ of a pipeline folder or hub repo id; or one CLIP vision file
    (Wan-AI's open-clip .pth, ComfyUI's clip_vision_h) with the preprocessing of Wan's diffusers repos:
    shortest edge and center crop to the tower's image size (224), bicubic, OpenAI mean and std.
    `config` (a dict, config.json, folder or hub repo id) overrides what a file's shapes imply: a tower
    other than Wan's 1280-wide ViT-H/14 needs its head count and activation from it.

    Like the text encoder, the tower is loaded on first use and released under the memory budget."""
    src = as_source(source)
    comp = open_component(src, "image_encoder", None if src.is_file else "image_encoder", config)
    encoder, shell = _on_demand(CLIPVisionModel, comp, dtype, "CLIP vision")
    if src.is_file:
        side = shell.cfg["image_size"]
        return WanCLIPVision(encoder=encoder, processor=CLIPImageProcessor(size=side, crop_size=side))
    return WanCLIPVision(encoder=encoder, processor=load_image_processor(src, "image_processor"))
