"""Image-to-video nodes: CLIP vision loading and encoding, and the conditioning
of Wan2.1 I2V / FLF2V, Wan2.2 I2V A14B and TI2V-5B on a start (and end) image."""
from __future__ import annotations

import numpy as np

from graphrt import Input, Node, Output, register_node

from .latent_nodes import SIZE_MULTIPLE, check_video_size
from .loader_nodes import DTYPES, SOURCE_TIP, _SourceNode


@register_node
class WanCLIPVisionLoader(_SourceNode):
    CATEGORY = "loaders/wan"
    DESCRIPTION = ("Loads the CLIP vision tower and its preprocessing (image_encoder/ and image_processor/) of a "
                   "Wan2.1 I2V or FLF2V pipeline, or one CLIP vision file (Wan-AI's open-clip .pth, ComfyUI's "
                   "clip_vision_h.safetensors). Wan2.2 models have none and need no CLIP.")
    INPUTS = [Input("source", "STRING", default="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
                    tooltip=SOURCE_TIP.replace("Wan2.1-T2V-1.3B", "Wan2.1-I2V-14B-480P")
                    + " Or a CLIP vision .pth / .safetensors file."),
              Input("dtype", DTYPES, default="float32")]
    OUTPUTS = [Output("clip_vision", "CLIP_VISION")]

    def execute(self, ctx, source, dtype="float32"):
        from .wan import load_clip_vision
        return (load_clip_vision(source, dtype),)


@register_node
class WanCLIPVisionEncode(Node):
    CATEGORY = "conditioning/wan"
    DESCRIPTION = ("CLIP image tokens (the penultimate layer's hidden states, all tokens) of each frame, after the "
                   "model's own preprocessing (shortest-edge resize, center crop, normalise), as diffusers does.")
    INPUTS = [Input("clip_vision", "CLIP_VISION"), Input("image", "IMAGE")]
    OUTPUTS = [Output("clip_vision_output", "CLIP_VISION_OUTPUT")]

    def execute(self, ctx, clip_vision, image):
        return (clip_vision.encode(np.asarray(image, np.float32)),)


def _one_frame(images, which: int) -> np.ndarray:
    frames = np.asarray(images.asnumpy() if hasattr(images, "asnumpy") else images, np.float32)
    return frames[which] if frames.ndim == 4 else frames


@register_node
class WanImageConditioning(Node):
    CATEGORY = "conditioning/wan"
    DESCRIPTION = ("Conditions a Wan image-to-video model on a start image (and, for FLF2V, an end image), as "
                   "diffusers' WanImageToVideoPipeline: the image is resized to width×height (Lanczos), the "
                   "conditioning video VAE-encoded, and mask + latents attached to both conditionings (Wan2.1 "
                   "I2V/FLF2V, Wan2.2 I2V A14B); with the Wan2.2 VAE (TI2V-5B) the first latent frame is "
                   "replaced instead. CLIP image tokens are needed by Wan2.1 models only. Outputs the empty "
                   "latent to denoise.")
    INPUTS = [
        Input("positive", "CONDITIONING"),
        Input("negative", "CONDITIONING"),
        Input("vae", "VAE"),
        Input("width", "INT", default=832, min=16, max=8192, step=16),
        Input("height", "INT", default=480, min=16, max=8192, step=16),
        Input("num_frames", "INT", default=81, min=1, max=10001, step=4, tooltip="4k+1 frames (81 = 5 s at 16 fps)."),
        Input("batch", "INT", default=1, min=1, max=64),
        Input("start_image", "IMAGE", tooltip="The first frame (the first image of a batch)."),
        Input("end_image", "IMAGE", optional=True,
              tooltip="FLF2V: the last frame (the last image of a batch). Needs the Wan2.1 VAE."),
        Input("clip_vision_output", "CLIP_VISION_OUTPUT", optional=True,
              tooltip="CLIP tokens of the start image (Wan2.1 I2V / FLF2V); for FLF2V it may hold both images."),
        Input("clip_vision_end_output", "CLIP_VISION_OUTPUT", optional=True,
              tooltip="FLF2V: CLIP tokens of the end image, appended after the start image's."),
    ]
    OUTPUTS = [Output("positive", "CONDITIONING"), Output("negative", "CONDITIONING"), Output("latent", "LATENT")]

    @classmethod
    def validate_inputs(cls, width=832, height=480, num_frames=81, **_):
        return check_video_size(width, height, num_frames) or None

    def execute(self, ctx, positive, negative, vae, width, height, num_frames, batch, start_image, end_image=None,
                clip_vision_output=None, clip_vision_end_output=None):
        import mindspore as ms
        from mindspore import mint
        from .wan.pipelines.image_to_video import condition_on_images
        s, t = vae.spatial_compression, vae.temporal_compression
        errors = check_video_size(width, height, num_frames, multiple=max(SIZE_MULTIPLE, 2 * s))
        if errors:
            raise ValueError("; ".join(errors))
        if clip_vision_end_output is not None and clip_vision_output is None:
            raise ValueError("clip_vision_end_output needs clip_vision_output (the start image's tokens)")
        embeds = clip_vision_output
        if clip_vision_end_output is not None:
            embeds = mint.cat([clip_vision_output, clip_vision_end_output], dim=0)
        pos, neg = condition_on_images(
            vae, positive, negative, _one_frame(start_image, 0), height=height, width=width, num_frames=num_frames,
            batch=batch, last_image=None if end_image is None else _one_frame(end_image, -1), image_embeds=embeds)
        shape = (batch, vae.z_dim, (num_frames - 1) // t + 1, height // s, width // s)
        return pos, neg, {"samples": ms.Tensor(np.zeros(shape, np.float32)), "empty": True}
