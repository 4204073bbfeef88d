"""Image/video input and output nodes. Every file is written atomically."""
from __future__ import annotations

import numpy as np

from graphrt import Input, Node, Output, register_node

from .wan import media
from .comfy.comfy_files import IMAGE_EXTENSIONS, INPUT_FOLDER, FileInputNode, file_input, find_input_file
from .fingerprint import file_digest

PREFIX_TIP = "File name prefix, may include a subfolder of the output folder; a 5-digit counter is appended."


def _frames(images) -> np.ndarray:
    return np.asarray(images.asnumpy() if hasattr(images, "asnumpy") else images, np.float32)


@register_node
class SaveImagesAsVideo(Node):
    CATEGORY = "image/video"
    DESCRIPTION = "Saves frames as an H.264 MP4 (yuv420p) or an animated WebP."
    INPUTS = [Input("images", "IMAGE"),
              Input("filename_prefix", "STRING", default="graphrt/video", tooltip=PREFIX_TIP),
              Input("format", ["mp4", "webp"], default="mp4"),
              Input("fps", "FLOAT", default=16.0, min=0.01, max=240.0, step=1.0),
              Input("crf", "INT", default=19, min=0, max=51, optional=True, tooltip="H.264 quality (lower is better).")]
    OUTPUTS = [Output("path", "STRING")]
    OUTPUT_NODE = True

    def execute(self, ctx, images, filename_prefix="graphrt/video", format="mp4", fps=16.0, crf=19):
        path = media.next_path(ctx.output_dir, filename_prefix, format)
        if format == "mp4":
            media.save_mp4(_frames(images), path, fps=fps, crf=crf)
        else:
            media.save_webp(_frames(images), path, fps=fps)
        ctx.ui(files=[str(path)])
        return (str(path),)


@register_node
class SaveImageFrames(Node):
    CATEGORY = "image"
    DESCRIPTION = "Saves every frame as a PNG in a new numbered folder."
    INPUTS = [Input("images", "IMAGE"),
              Input("filename_prefix", "STRING", default="graphrt/frames", tooltip=PREFIX_TIP)]
    OUTPUTS = [Output("path", "STRING")]
    OUTPUT_NODE = True

    def execute(self, ctx, images, filename_prefix="graphrt/frames"):
        folder = media.save_png_frames(_frames(images), media.next_path(ctx.output_dir, filename_prefix, ""))
        ctx.ui(files=[str(folder)])
        return (str(folder),)


@register_node
class SaveTensor(Node):
    CATEGORY = "latent"
    DESCRIPTION = "Saves a latent (normalised samples) or frames as a raw float32 .npy or .safetensors file."
    INPUTS = [Input("tensor", "LATENT,IMAGE"),
              Input("filename_prefix", "STRING", default="graphrt/tensor", tooltip=PREFIX_TIP),
              Input("format", ["safetensors", "npy"], default="safetensors")]
    OUTPUTS = [Output("path", "STRING")]
    OUTPUT_NODE = True

    def execute(self, ctx, tensor, filename_prefix="graphrt/tensor", format="safetensors"):
        value = tensor["samples"] if isinstance(tensor, dict) else tensor
        name = "latent" if isinstance(tensor, dict) else "images"
        path = media.save_tensor(value, media.next_path(ctx.output_dir, filename_prefix, format), name=name)
        ctx.ui(files=[str(path)])
        return (str(path),)


@register_node
class LoadImage(FileInputNode):
    CATEGORY = "image"
    DESCRIPTION = ("Loads an image file as ComfyUI's LoadImage does: IMAGE [N, H, W, 3] in 0..1 (animated files "
                   "give every frame) and MASK = 1 − alpha ([1, 64, 64] zeros without alpha). `image` is a file "
                   "name in the input folder (--input-dir, default ./input), or a path.")
    FOLDER_INPUTS = {"image": INPUT_FOLDER}
    INPUT_EXTENSIONS = IMAGE_EXTENSIONS
    INPUTS = [file_input("image", INPUT_FOLDER)]
    OUTPUTS = [Output("IMAGE", "IMAGE"), Output("MASK", "MASK")]

    @classmethod
    def fingerprint(cls, image="", **_):
        try:
            return file_digest(find_input_file(image))    # the content: an edited image re-runs the graph
        except FileNotFoundError:
            return f"missing:{image}"

    def execute(self, ctx, image):
        from .wan.comfy_media import load_image_with_mask
        return load_image_with_mask(find_input_file(image))


@register_node
class LoadVideoFrames(Node):
    CATEGORY = "image/video"
    DESCRIPTION = "Loads a video file's frames [N, H, W, 3] in 0..1 and its frame rate."
    INPUTS = [Input("path", "STRING", default=""),
              Input("max_frames", "INT", default=0, min=0, max=100000, tooltip="0 = all."),
              Input("skip_first", "INT", default=0, min=0, max=100000),
              Input("every_nth", "INT", default=1, min=1, max=1000)]
    OUTPUTS = [Output("images", "IMAGE"), Output("fps", "FLOAT")]

    @classmethod
    def fingerprint(cls, path="", **_):
        return file_digest(path)

    @classmethod
    def validate_inputs(cls, path="", **_):
        from pathlib import Path
        return None if Path(path).is_file() else f"no such video file: {path!r}"

    def execute(self, ctx, path, max_frames=0, skip_first=0, every_nth=1):
        frames, fps = media.load_video(path, max_frames, skip_first, every_nth)
        return (frames, fps)


@register_node
class ImageResize(Node):
    CATEGORY = "image"
    DESCRIPTION = ("Resizes images / video frames to width×height (PIL, through 8-bit as diffusers' processors do). "
                   "crop=center keeps the aspect ratio.")
    INPUTS = [Input("images", "IMAGE"),
              Input("width", "INT", default=832, min=1, max=16384),
              Input("height", "INT", default=480, min=1, max=16384),
              Input("method", list(media.RESAMPLE), default="lanczos"),
              Input("crop", ["none", "center"], default="none")]
    OUTPUTS = [Output("images", "IMAGE")]

    def execute(self, ctx, images, width, height, method="lanczos", crop="none"):
        return (media.resize_frames(_frames(images), width, height, method, crop),)
