"""ComfyUI's loader nodes for Wan: UNETLoader, CLIPLoader, VAELoader, CLIPVisionLoader and the LoRA loaders.

Files come from the models folder by name (`comfy_files`) and each format is recognised from its
keys (ComfyUI's repackaged files: fp16 / bf16 / fp8_scaled transformers with or without the
`model.diffusion_model.` prefix, umt5_xxl fp16 / fp8_e4m3fn_scaled with the tokenizer inside,
wan_2.1_vae / wan2.2_vae, clip_vision_h). What no tensor records is taken as ComfyUI fixes it
(`checkpoints/comfy_detection.py`): a transformer's heads = dim // 128 and its VACE layers, a
VAE's latent statistics by channel count and the Wan2.2 VAE's 2×2 patches.

Compute dtypes. ComfyUI's `weight_dtype` picks the dtype the weights are *stored* in on the GPU
(fp8_e4m3fn, fp8_e5m2; `_fast` adds fp8 matmuls) while computing in fp16 / bf16. MindSpore has no
fp8 compute and its CPU backend no bf16, so here every option loads the weights dequantised
(fp8_scaled files are multiplied by their scales on load) and computes in float32 on CPU and in
bfloat16 on an accelerator; the option is accepted so that ComfyUI's workflows validate, and
changes nothing else. CLIPLoader's `device` is accepted likewise: models run where MindSpore runs.

Memory. ComfyUI fits models to the memory it has; so do these, under the memory budget
(`--memory-budget`): UNETLoader streams a diffusion model's blocks from its file when it does not
fit (`offload="auto"`), and CLIPLoader's encoder is loaded at the first encode, streamed when it
does not fit, and released when another model needs the room.
"""
from __future__ import annotations

from graphrt import Input, Output, register_node

from .comfy_files import FileInputNode, file_input, resolve

WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"]
# ComfyUI samples every Wan model as a discrete flow with shift 8 (comfy/supported_models.py WAN21_T2V and
# after) unless ModelSamplingSD3 patches it; the ComfyUI samplers default to that, and `flow_shift` makes our
# WanDenoise (shift 0 = the model's own) agree.
COMFY_WAN_SHIFT = 8.0


def compute_dtype() -> str:
    """float32 on CPU (MindSpore's CPU backend has no bf16 kernels), bfloat16 elsewhere."""
    from ..wan.backend.runtime import device
    return "float32" if device() == "CPU" else "bfloat16"


@register_node
class UNETLoader(FileInputNode):
    CATEGORY = "advanced/loaders"
    DESCRIPTION = ("Loads a Wan diffusion model file (ComfyUI's repackaged wan2.1 / wan2.2 files, any precision); "
                   "weight_dtype is accepted for compatibility (see the module notes).")
    FOLDER_INPUTS = {"unet_name": "diffusion_models"}
    INPUTS = [file_input("unet_name", "diffusion_models"),
              Input("weight_dtype", WEIGHT_DTYPES)]
    OUTPUTS = [Output("MODEL", "MODEL")]

    def execute(self, ctx, unet_name, weight_dtype="default"):
        from ..wan import load_denoiser
        from ..wan.checkpoints.comfy_detection import comfy_transformer_config
        path = resolve("diffusion_models", unet_name)
        # ComfyUI fits models to the memory it has; "auto" streams a file that does not fit the budget
        model = load_denoiser(str(path), compute_dtype(), config=comfy_transformer_config(path), offload="auto")
        return (model.with_(scheduler_config={**model.scheduler_config, "flow_shift": COMFY_WAN_SHIFT},
                            name=unet_name),)


@register_node
class CLIPLoader(FileInputNode):
    CATEGORY = "advanced/loaders"
    DESCRIPTION = ("Loads a text encoder file. Wan uses type 'wan' (UMT5-XXL; ComfyUI's umt5_xxl_fp16 / "
                   "fp8_e4m3fn_scaled, whose tokenizer is read from the file); other types are not supported.")
    FOLDER_INPUTS = {"clip_name": "text_encoders"}
    INPUTS = [file_input("clip_name", "text_encoders"),
              Input("type", CLIP_TYPES),
              Input("device", ["default", "cpu"], optional=True)]
    OUTPUTS = [Output("CLIP", "CLIP")]

    @classmethod
    def validate_inputs(cls, type=None, **values):
        errors = super().validate_inputs(**values) or []
        if type is not None and type != "wan":
            errors.append(f"type '{type}' is not supported: this runtime has the Wan text encoder only "
                          "(type 'wan', UMT5-XXL)")
        return errors or None

    def execute(self, ctx, clip_name, type="wan", device="default"):
        from ..wan.pipelines.comfy_text import load_comfy_text
        return (load_comfy_text(resolve("text_encoders", clip_name), compute_dtype()),)


@register_node
class VAELoader(FileInputNode):
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a Wan VAE file (wan_2.1_vae or wan2.2_vae, told apart by their keys); runs in float32."
    FOLDER_INPUTS = {"vae_name": "vae"}
    INPUTS = [file_input("vae_name", "vae")]
    OUTPUTS = [Output("VAE", "VAE")]

    def execute(self, ctx, vae_name):
        from ..wan import load_vae
        from ..wan.checkpoints.comfy_detection import comfy_vae_config
        path = resolve("vae", vae_name)
        return (load_vae(str(path), None, "float32", config=comfy_vae_config(path)),)


@register_node
class CLIPVisionLoader(FileInputNode):
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a CLIP vision file (clip_vision_h for Wan2.1 I2V / FLF2V)."
    FOLDER_INPUTS = {"clip_name": "clip_vision"}
    INPUTS = [file_input("clip_name", "clip_vision")]
    OUTPUTS = [Output("CLIP_VISION", "CLIP_VISION")]

    def execute(self, ctx, clip_name):
        from ..wan import load_clip_vision
        return (load_clip_vision(str(resolve("clip_vision", clip_name)), compute_dtype()),)


def apply_lora(model, path, strength: float):
    """The MODEL with the LoRA file at `path` applied (a view: the base weights are shared)."""
    from ..wan import read_lora, with_lora
    base = model.transformer
    return model.with_(transformer=with_lora(base, read_lora(path, getattr(base, "base", base)), strength))


def text_encoder_keys(path) -> list[str]:
    """Keys of a LoRA file that patch a text encoder (kohya `lora_te*`, ComfyUI `text_encoders.`)."""
    from ..wan.checkpoints.checkpoint import Checkpoint
    return [k for k in Checkpoint([path]).keys() if k.startswith(("lora_te", "text_encoder", "te."))]


_STRENGTH_TIP = "How strongly to modify the diffusion model. This value can be negative."


@register_node
class LoraLoaderModelOnly(FileInputNode):
    CATEGORY = "loaders"
    DESCRIPTION = "Applies a LoRA to the diffusion model (ComfyUI / original, diffusers / PEFT or kohya keys)."
    FOLDER_INPUTS = {"lora_name": "loras"}
    INPUTS = [Input("model", "MODEL"),
              file_input("lora_name", "loras"),
              Input("strength_model", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01)]
    OUTPUTS = [Output("MODEL", "MODEL")]

    def execute(self, ctx, model, lora_name, strength_model=1.0):
        if strength_model == 0:
            return (model,)
        return (apply_lora(model, resolve("loras", lora_name), strength_model),)


@register_node
class LoraLoader(FileInputNode):
    CATEGORY = "loaders"
    DESCRIPTION = ("Applies a LoRA to the diffusion model and the text encoder. Wan LoRAs patch the diffusion "
                   "model only; a LoRA with text-encoder weights is refused unless strength_clip is 0.")
    FOLDER_INPUTS = {"lora_name": "loras"}
    INPUTS = [Input("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
              Input("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
              file_input("lora_name", "loras", "The name of the LoRA."),
              Input("strength_model", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01, tooltip=_STRENGTH_TIP),
              Input("strength_clip", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly to modify the CLIP model. This value can be negative.")]
    OUTPUTS = [Output("MODEL", "MODEL"), Output("CLIP", "CLIP")]

    def execute(self, ctx, model, clip, lora_name, strength_model=1.0, strength_clip=1.0):
        path = resolve("loras", lora_name)
        if strength_clip != 0:
            te = text_encoder_keys(path)
            if te:
                raise ValueError(f"{lora_name} has {len(te)} text-encoder LoRA weights (first: {te[0]}), which this "
                                 "runtime cannot apply to UMT5; set strength_clip to 0 to use its diffusion-model "
                                 "part only")
        if strength_model != 0:
            model = apply_lora(model, path, strength_model)
        return (model, clip)

