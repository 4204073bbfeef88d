"""Loader nodes: a diffusers-layout folder, a hub repo id, or the `tiny` preset."""
from __future__ import annotations

from graphrt import Input, Node, Output, register_node

from .fingerprint import source_stamp

DTYPES = ["float32", "float16", "bfloat16"]
SOURCE_TIP = ("A Wan '-Diffusers' folder, a hub repo id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers, "
              "or 'tiny' for the built-in random-weight preset.")


COMPILE_TIP = ("Run the transformer blocks under ms.jit (graph mode): one graph per latent shape, shared by all "
               "blocks, compiled on first use (a few seconds). 'auto' compiles real checkpoints (hidden size "
               ">= 1024) and leaves toy models eager. Falls back to eager if compilation fails.")
COMPILE_MODES = ["auto", "on", "off"]
OFFLOAD_TIP = ("Memory: 'none' keeps every transformer weight in memory (widened to the compute dtype); 'blocks' "
               "keeps the embeddings and head and reads each block from the memory-mapped file as it runs, the "
               "next one read and widened while the current one computes (a 14B model in a few GB); 'model' "
               "widens the whole model on first use and releases it when another model needs the room; 'auto' "
               "streams a model that does not fit the memory budget (--memory-budget) and, for Wan2.2's two "
               "experts that fit only one at a time, widens one at a time (the default: the same numbers in every mode).")
OFFLOAD_MODES = ["none", "auto", "blocks", "model"]
TEXT_OFFLOAD_TIP = ("Memory: 'blocks' reads each of the encoder's blocks from the memory-mapped file as it runs "
                    "and only the prompt's rows of the token embedding (UMT5-XXL in float32: about 2 GB instead "
                    "of 22.8); 'none' loads it whole; 'model' widens it whole on first use; 'auto' streams it "
                    "when it does not fit the memory budget's room at its first encode. The encoder is loaded at "
                    "the first encode and released when another model needs the room, whichever mode.")


def config_tip(what: str, needs: str) -> str:
    return (f"Empty: read the {what}'s settings off the file's tensors. Or a pipeline folder, a config.json or a "
            f"hub repo id whose config overrides them, as diffusers' from_single_file(config=...). {needs}")


def _config_stamp(config: str) -> str:
    return "|config:" + source_stamp(config) if config else ""


class _SourceNode(Node):
    @classmethod
    def fingerprint(cls, source="tiny", **_):
        return source_stamp(source)


@register_node
class WanPipelineLoader(_SourceNode):
    CATEGORY = "loaders/wan"
    DESCRIPTION = "Loads a whole Wan pipeline: transformer(s), UMT5 text encoder with tokenizer, and VAE."
    INPUTS = [
        Input("source", "STRING", default="tiny", tooltip=SOURCE_TIP),
        Input("dtype", DTYPES, default="float32", tooltip="Transformer compute dtype (float32 on CPU)."),
        Input("text_encoder_dtype", DTYPES, default="float32"),
        Input("vae_dtype", DTYPES, default="float32", tooltip="The VAE is best run in float32."),
        Input("compile", COMPILE_MODES, default="auto", optional=True, tooltip=COMPILE_TIP),
        Input("offload", OFFLOAD_MODES, default="auto", optional=True, tooltip=OFFLOAD_TIP),
        Input("text_encoder_offload", OFFLOAD_MODES, default="auto", optional=True, tooltip=TEXT_OFFLOAD_TIP),
    ]
    OUTPUTS = [Output("model", "MODEL"), Output("text_encoder", "TEXT_ENCODER"), Output("vae", "VAE")]

    def execute(self, ctx, source, dtype="float32", text_encoder_dtype="float32", vae_dtype="float32", compile="auto",
                offload="auto", text_encoder_offload="auto"):
        from .wan import as_source, load_denoiser, load_text, load_vae
        src = as_source(source)
        return (load_denoiser(src, dtype, compile, offload=offload),
                load_text(src, text_encoder_dtype, offload=text_encoder_offload), load_vae(src, "vae", vae_dtype))


@register_node
class WanModelLoader(_SourceNode):
    CATEGORY = "loaders/wan"
    DESCRIPTION = ("Loads only the transformer(s) of a Wan pipeline, with its scheduler settings; or one "
                   "single-file transformer (original Wan or ComfyUI key names, bf16/fp16/fp8/fp8_scaled), "
                   "plus the low-noise expert file for Wan2.2 A14B.")
    INPUTS = [Input("source", "STRING", default="tiny",
                    tooltip=SOURCE_TIP + " Or a .safetensors transformer file (original/ComfyUI layout)."),
              Input("dtype", DTYPES, default="float32"),
              Input("compile", COMPILE_MODES, default="auto", optional=True, tooltip=COMPILE_TIP),
              Input("low_noise_source", "STRING", default="", optional=True,
                    tooltip="Wan2.2 A14B from single files: the low-noise expert's file (source is the "
                            "high-noise one)."),
              Input("boundary_ratio", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.005, optional=True,
                    tooltip="Expert switch point as a fraction of 1000 timesteps; 0 keeps the model's own "
                            "(0.875 T2V, 0.9 I2V)."),
              Input("config", "STRING", default="", optional=True,
                    tooltip=config_tip("transformer", "No tensor records the head count: a file of a released "
                                       "size (hidden size 1536, 3072 or 5120: 128-wide heads) needs none, any "
                                       "other needs this.")),
              Input("offload", OFFLOAD_MODES, default="auto", optional=True, tooltip=OFFLOAD_TIP)]
    OUTPUTS = [Output("model", "MODEL")]

    @classmethod
    def fingerprint(cls, source="tiny", low_noise_source="", config="", **_):
        return (source_stamp(source) + ("|" + source_stamp(low_noise_source) if low_noise_source else "")
                + _config_stamp(config))

    def execute(self, ctx, source, dtype="float32", compile="auto", low_noise_source="", boundary_ratio=0.0,
                config="", offload="auto"):
        from .wan import load_denoiser
        return (load_denoiser(source, dtype, compile, low_noise_source=low_noise_source or None,
                              boundary_ratio=boundary_ratio or None, config=config or None, offload=offload),)


@register_node
class WanTextEncoderLoader(_SourceNode):
    CATEGORY = "loaders/wan"
    DESCRIPTION = ("Loads the UMT5 text encoder and its tokenizer of a Wan pipeline, or an encoder file with "
                   "transformers' key names (ComfyUI's umt5_xxl_fp16 / fp8_e4m3fn_scaled) or Wan's own "
                   "(models_t5_umt5-xxl-enc-bf16.pth) plus a tokenizer.")
    INPUTS = [Input("source", "STRING", default="tiny",
                    tooltip=SOURCE_TIP + " Or a UMT5 encoder .safetensors / .pth file."),
              Input("dtype", DTYPES, default="float32"),
              Input("tokenizer_source", "STRING", default="", optional=True,
                    tooltip="Where the tokenizer comes from: a pipeline folder or hub repo id with a tokenizer/ "
                            "folder. Empty: the source's own, or Wan-AI/Wan2.1-T2V-1.3B-Diffusers for a file "
                            "(every Wan model uses the same UMT5 tokenizer)."),
              Input("config", "STRING", default="", optional=True,
                    tooltip=config_tip("encoder", "Layer-norm eps and attention distance are those of every "
                                       "T5 (1e-6, 128) unless given here.")),
              Input("offload", OFFLOAD_MODES, default="auto", optional=True, tooltip=TEXT_OFFLOAD_TIP)]
    OUTPUTS = [Output("text_encoder", "TEXT_ENCODER")]

    @classmethod
    def fingerprint(cls, source="tiny", tokenizer_source="", config="", **_):
        return (source_stamp(source) + ("|" + source_stamp(tokenizer_source) if tokenizer_source else "")
                + _config_stamp(config))

    def execute(self, ctx, source, dtype="float32", tokenizer_source="", config="", offload="auto"):
        from .wan import load_text
        return (load_text(source, dtype, tokenizer_source=tokenizer_source or None, config=config or None,
                          offload=offload),)


@register_node
class WanVAELoader(_SourceNode):
    CATEGORY = "loaders/wan"
    DESCRIPTION = ("Loads the VAE (Wan2.1 or Wan2.2, from its config) of a Wan pipeline, or a Wan VAE file "
                   "with the original / ComfyUI key names (Wan2.1_VAE.pth, wan_2.1_vae / wan2.2_vae .safetensors).")
    INPUTS = [Input("source", "STRING", default="tiny",
                    tooltip=SOURCE_TIP + " Or a Wan2.1 / Wan2.2 VAE .safetensors / .pth file."),
              Input("dtype", DTYPES, default="float32"),
              Input("config", "STRING", default="", optional=True,
                    tooltip=config_tip("VAE", "No tensor records the latent mean and std: Wan2.1's and Wan2.2's "
                                       "VAE files need none, any other VAE needs this."))]
    OUTPUTS = [Output("vae", "VAE")]

    @classmethod
    def fingerprint(cls, source="tiny", config="", **_):
        return source_stamp(source) + _config_stamp(config)

    def execute(self, ctx, source, dtype="float32", config=""):
        from .wan import load_vae
        return (load_vae(source, "vae", dtype, config=config or None),)


@register_node
class WanLoraLoader(Node):
    CATEGORY = "loaders/wan"
    DESCRIPTION = ("Applies a LoRA to a Wan model (diffusers/PEFT with its saved LoraConfig, ComfyUI/original "
                   "incl. LightX2V / CausVid / Lightning step-distillation files, or kohya/musubi), as diffusers' "
                   "load_lora_weights does. The base model is shared, not copied; chain several of these to stack "
                   "LoRAs. Keys not applied are listed, with the reason, in the `skipped` output and the run report.")
    INPUTS = [Input("model", "MODEL"),
              Input("lora", "STRING", default="", tooltip="Path of the LoRA .safetensors file."),
              Input("strength", "FLOAT", default=1.0, min=-10.0, max=10.0, step=0.05),
              Input("apply_to", ["transformer", "transformer_2", "both"], default="transformer", optional=True,
                    tooltip="Wan2.2 A14B: transformer is the high-noise expert, transformer_2 the low-noise one "
                            "(Lightning LoRAs ship one file for each). Single-expert models use transformer."),
              Input("full_deltas", ["skip", "apply"], default="skip", optional=True,
                    tooltip="The .diff / .diff_b / .diff_m deltas diffusers does not apply (norms, modulation, "
                            "full weights other than head.head): skip them as diffusers does, or add them to the "
                            "weights as ComfyUI and LightX2V do.")]
    OUTPUTS = [Output("model", "MODEL"),
               Output("skipped", "STRING", tooltip="One line per LoRA key not applied: 'key: reason'.")]

    @classmethod
    def fingerprint(cls, lora="", **_):
        return source_stamp(lora)

    @classmethod
    def validate_inputs(cls, lora="", **_):
        import os
        if isinstance(lora, str) and lora and not os.path.isfile(os.path.expanduser(lora)):
            return [f"LoRA file not found: {lora}"]
        if lora == "":
            return ["no LoRA file given"]
        return []

    def execute(self, ctx, model, lora, strength=1.0, apply_to="transformer", full_deltas="skip"):
        import os
        from .wan import read_lora, with_lora
        path = os.path.expanduser(lora)
        changes, skipped = {}, {}
        targets = ["transformer", "transformer_2"] if apply_to == "both" else [apply_to]
        for name in targets:
            base = getattr(model, name)
            if base is None:
                if apply_to == "transformer_2":
                    raise ValueError("apply_to=transformer_2 needs a two-expert model (Wan2.2 A14B)")
                continue
            weights = read_lora(path, getattr(base, "base", base), full_deltas=full_deltas == "apply")
            skipped.update(weights.skipped)
            changes[name] = with_lora(base, weights, strength)
        lines = [f"{key}: {why}" for key, why in skipped.items()]
        if lines:   # the run report keeps it, also when the node's output comes from the cache
            ctx.ui(lora_skipped=lines)
        return model.with_(**changes), "\n".join(lines)
