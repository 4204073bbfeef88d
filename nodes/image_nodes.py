"""Image-to-video nodes: CLIP vision loading and encoding, the conditioning of Wan2.1 I2V /
FLF2V, Wan2.2 I2V A14B and TI2V-5B on a start (and end) image, and `ImageList`, which gathers
images of different sizes (an IMAGE batch cannot) into an IMAGE_LIST (e.g. VACE references).

IMAGE_LIST is a tuple of single images, each [H, W, 3] float32 in 0..1, sizes free."""
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
    DISK_CACHE = True       # image tokens: small, and they spare loading CLIP on a rerun
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
        return pos, neg, {"samples": ms.Tensor(np.zeros(shape, np.float32)), "empty": True, "normalized": True}


IMAGE_LIST_SLOTS = 6


def image_list_items(images, name: str) -> list[np.ndarray]:
    """The single images [H, W, 3] of an IMAGE batch [N, H, W, 3] (or one image [H, W, 3])."""
    frames = np.asarray(images.asnumpy() if hasattr(images, "asnumpy") else images, np.float32)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] < 3:
        raise ValueError(f"{name}: expected IMAGE frames [N, H, W, 3], got shape {tuple(frames.shape)}")
    return [f[..., :3] for f in frames]


@register_node
class ImageList(Node):
    CATEGORY = "image"
    DESCRIPTION = ("Gathers images of any sizes into an IMAGE_LIST, in order: the `images` list first (to chain "
                   "ImageList nodes), then image_1, image_2, … (each frame of a batch is one item). An IMAGE batch "
                   "needs equal sizes; a list does not. WanVaceConditioning takes it as reference_images.")
    INPUTS = ([Input("images", "IMAGE_LIST", optional=True, tooltip="A list to extend (chain ImageList nodes).")]
              + [Input(f"image_{i}", "IMAGE", optional=True, tooltip="Appended to the list, each frame one item.")
                 for i in range(1, IMAGE_LIST_SLOTS + 1)])
    OUTPUTS = [Output("images", "IMAGE_LIST")]

    def execute(self, ctx, images=None, **slots):
        items = []
        if images is not None:
            if not isinstance(images, (list, tuple)):
                raise ValueError(f"images: expected an IMAGE_LIST, got {type(images).__name__}")
            for i, image in enumerate(images):
                items += image_list_items(image, f"images[{i}]")
        for i in range(1, IMAGE_LIST_SLOTS + 1):
            if slots.get(f"image_{i}") is not None:
                items += image_list_items(slots[f"image_{i}"], f"image_{i}")
        if not items:
            raise ValueError("ImageList has no images: connect image_1 (or more) or an `images` list")
        return (tuple(np.ascontiguousarray(item) for item in items),)
