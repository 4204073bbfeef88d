"""ComfyUI's conditioning nodes for Wan: CLIPTextEncode, CLIPVisionEncode and the image / VACE
conditioning of comfy_extras/nodes_wan.py (WanImageToVideo, WanFirstLastFrameToVideo, WanVaceToVideo).
The numbers are ComfyUI's: `nodes.wan.pipelines.comfy_text` and `comfy_conditioning`."""
from __future__ import annotations

import numpy as np

from graphrt import Input, Node, Output, register_node

MAX_RESOLUTION = 16384     # ComfyUI's nodes.MAX_RESOLUTION

_POS_NEG_LATENT = [Output("positive", "CONDITIONING"), Output("negative", "CONDITIONING"), Output("latent", "LATENT")]


def _size_inputs(width=832, height=480, length=81, step=16, min_size=16) -> list:
    return [Input("width", "INT", default=width, min=min_size, max=MAX_RESOLUTION, step=step),
            Input("height", "INT", default=height, min=min_size, max=MAX_RESOLUTION, step=step),
            Input("length", "INT", default=length, min=1, max=MAX_RESOLUTION, step=4),
            Input("batch_size", "INT", default=1, min=1, max=4096)]


def raw_latent(samples) -> dict:
    """A LATENT of raw VAE latents, as ComfyUI's nodes make them."""
    import mindspore as ms
    return {"samples": ms.Tensor(np.asarray(samples, np.float32)), "normalized": False}


@register_node
class CLIPTextEncode(Node):
    DISK_CACHE = True       # small and costly to recompute: kept across restarts (graphrt.disk_cache)
    CATEGORY = "conditioning"
    DESCRIPTION = ("Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                   "diffusion model towards generating specific images.")
    INPUTS = [Input("text", "STRING", multiline=True, tooltip="The text to be encoded."),
              Input("clip", "CLIP", tooltip="The CLIP model used for encoding the text.")]
    OUTPUTS = [Output("CONDITIONING", "CONDITIONING",
                      tooltip="A conditioning containing the embedded text used to guide the diffusion model.")]

    def execute(self, ctx, text, clip):
        from ..wan.pipelines.comfy_text import encode_comfy_prompt
        from ..wan.pipelines.conditioning import WanConditioning
        return (WanConditioning(embeds=encode_comfy_prompt(clip, text), prompt=text),)


@register_node
class CLIPVisionEncode(Node):
    DISK_CACHE = True       # small and costly to recompute: kept across restarts (graphrt.disk_cache)
    CATEGORY = "conditioning"
    DESCRIPTION = ("CLIP vision tokens of the image(s): the penultimate layer's hidden states after ComfyUI's "
                   "preprocessing (antialiased bicubic resize; crop 'center' keeps the aspect, 'none' squashes).")
    INPUTS = [Input("clip_vision", "CLIP_VISION"), Input("image", "IMAGE"), Input("crop", ["center", "none"])]
    OUTPUTS = [Output("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")]

    def execute(self, ctx, clip_vision, image, crop="center"):
        import mindspore as ms
        from ..wan.models.comfy_resize import clip_preprocess
        encoder = clip_vision.encoder
        pixels = clip_preprocess(np.asarray(image, np.float32), size=int(encoder.cfg["image_size"]),
                                 mean=clip_vision.processor.mean, std=clip_vision.processor.std,
                                 crop=crop == "center")
        return (encoder(ms.Tensor(pixels).astype(encoder.dtype)).astype(ms.float32),)


@register_node
class WanImageToVideo(Node):
    CATEGORY = "conditioning/video_models"
    DESCRIPTION = ("Image-to-video conditioning (Wan2.1 I2V, Wan2.2 A14B I2V): the start image(s) and grey frames "
                   "VAE-encoded, with the known-frame mask, on both conditionings; CLIP vision tokens if given. "
                   "Gives the empty latent to sample.")
    INPUTS = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
              *_size_inputs(),
              Input("clip_vision_output", "CLIP_VISION_OUTPUT", optional=True),
              Input("start_image", "IMAGE", optional=True)]
    OUTPUTS = _POS_NEG_LATENT

    def execute(self, ctx, positive, negative, vae, width, height, length, batch_size, clip_vision_output=None,
                start_image=None):
        from ..wan.pipelines.comfy_conditioning import image_to_video
        pos, neg, latent = image_to_video(positive, negative, vae, width, height, length, batch_size,
                                          start_image=start_image, clip_vision_output=clip_vision_output)
        return pos, neg, raw_latent(latent)


@register_node
class WanFirstLastFrameToVideo(Node):
    CATEGORY = "conditioning/video_models"
    DESCRIPTION = ("First-last-frame conditioning (Wan2.1 FLF2V, Wan2.2 A14B I2V): start and end images in the "
                   "conditioning video and mask; the CLIP tokens of both images joined.")
    INPUTS = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
              *_size_inputs(),
              Input("clip_vision_start_image", "CLIP_VISION_OUTPUT", optional=True),
              Input("clip_vision_end_image", "CLIP_VISION_OUTPUT", optional=True),
              Input("start_image", "IMAGE", optional=True),
              Input("end_image", "IMAGE", optional=True)]
    OUTPUTS = _POS_NEG_LATENT

    def execute(self, ctx, positive, negative, vae, width, height, length, batch_size, clip_vision_start_image=None,
                clip_vision_end_image=None, start_image=None, end_image=None):
        from ..wan.pipelines.comfy_conditioning import first_last_frame_to_video
        pos, neg, latent = first_last_frame_to_video(
            positive, negative, vae, width, height, length, batch_size, start_image=start_image, end_image=end_image,
            clip_vision_start_image=clip_vision_start_image, clip_vision_end_image=clip_vision_end_image)
        return pos, neg, raw_latent(latent)


@register_node
class WanVaceToVideo(Node):
    CATEGORY = "conditioning/video_models"
    DESCRIPTION = ("VACE conditioning: a control video (kept where the mask is 0, regenerated where it is 1), "
                   "masks and a reference image; gives the latent to sample and how many leading latent frames "
                   "(the reference) TrimVideoLatent must drop after sampling.")
    INPUTS = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
              *_size_inputs(),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=1000.0, step=0.01),
              Input("control_video", "IMAGE", optional=True),
              Input("control_masks", "MASK", optional=True),
              Input("reference_image", "IMAGE", optional=True)]
    OUTPUTS = _POS_NEG_LATENT + [Output("trim_latent", "INT")]

    def execute(self, ctx, positive, negative, vae, width, height, length, batch_size, strength=1.0,
                control_video=None, control_masks=None, reference_image=None):
        from ..wan.pipelines.comfy_conditioning import vace_to_video
        pos, neg, latent, trim = vace_to_video(positive, negative, vae, width, height, length, batch_size, strength,
                                               control_video=control_video, control_masks=control_masks,
                                               reference_image=reference_image)
        return pos, neg, raw_latent(latent), trim
