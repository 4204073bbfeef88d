"""ComfyUI's image nodes used around Wan workflows: SaveImage, PreviewImage, ImageFromBatch,
BatchImagesNode, GetImageSize, ResizeImageMaskNode. Resizing is ComfyUI's (`models/comfy_resize.py`)."""
from __future__ import annotations

import math

import numpy as np

from graphrt import Input, Node, Output, register_node

from .comfy_conditioning_nodes import MAX_RESOLUTION


def _arr(x) -> np.ndarray:
    return np.asarray(x.asnumpy() if hasattr(x, "asnumpy") else x, np.float32)


@register_node
class SaveImage(Node):
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to the output folder, one PNG each."
    INPUTS = [Input("images", "IMAGE", tooltip="The images to save."),
              Input("filename_prefix", "STRING", default="ComfyUI",
                    tooltip="The prefix for the file to save; it may name a subfolder of the output folder.")]
    OUTPUTS = []
    OUTPUT_NODE = True

    def execute(self, ctx, images, filename_prefix="ComfyUI"):
        from ..wan import media
        from ..wan.comfy_media import save_png
        paths = [str(save_png(img, media.next_path(ctx.output_dir, filename_prefix, "png"))) for img in _arr(images)]
        ctx.ui(files=paths)
        return ()


@register_node
class PreviewImage(Node):
    CATEGORY = "image"
    DESCRIPTION = "Shows the images as this node's live preview (nothing is written to the output folder)."
    INPUTS = [Input("images", "IMAGE")]
    OUTPUTS = []
    OUTPUT_NODE = True

    def execute(self, ctx, images):
        ctx.preview(_arr(images))
        return ()


@register_node
class ImageFromBatch(Node):
    CATEGORY = "image/batch"
    DESCRIPTION = "length images of the batch from batch_index (both clamped to the batch)."
    INPUTS = [Input("image", "IMAGE"),
              Input("batch_index", "INT", default=0, min=0, max=4095),
              Input("length", "INT", default=1, min=1, max=4096)]
    OUTPUTS = [Output("IMAGE", "IMAGE")]

    def execute(self, ctx, image, batch_index=0, length=1):
        image = _arr(image)
        start = min(image.shape[0] - 1, batch_index)
        return (image[start:start + min(image.shape[0] - start, length)].copy(),)


BATCH_MAX = 50


def batch_images(images: list) -> np.ndarray:
    """ComfyUI's batch_images: channels padded with 1.0 to the widest, every image resized (bilinear,
    centre crop) to the first one's size, then stacked."""
    from ..wan.models.comfy_resize import resize_frames
    images = [_arr(i) for i in images]
    channels = max(i.shape[-1] for i in images)
    images = [np.concatenate([i, np.ones(i.shape[:-1] + (1,), np.float32)], -1) if i.shape[-1] < channels else i
              for i in images]
    h, w = images[0].shape[1:3]
    return np.concatenate([i if i.shape[1:] == images[0].shape[1:] else resize_frames(i, w, h, "bilinear", "center")
                           for i in images], axis=0)


@register_node
class BatchImagesNode(Node):
    CATEGORY = "image"
    DESCRIPTION = "Joins images into one batch (resized to the first image's size)."
    INPUTS = [Input(f"images.image{i}", "IMAGE", optional=i >= 2) for i in range(BATCH_MAX)]
    OUTPUTS = [Output("IMAGE", "IMAGE")]

    def execute(self, ctx, **images):
        given = [images[f"images.image{i}"] for i in range(BATCH_MAX) if images.get(f"images.image{i}") is not None]
        return (batch_images(given),)


@register_node
class GetImageSize(Node):
    CATEGORY = "image"
    DESCRIPTION = "Returns width and height of the image, and passes it through unchanged."
    INPUTS = [Input("image", "IMAGE")]
    OUTPUTS = [Output("width", "INT"), Output("height", "INT"), Output("batch_size", "INT")]

    def execute(self, ctx, image):
        n, h, w = np.shape(image)[:3]
        return int(w), int(h), int(n)


RESIZE_TYPES = ["scale dimensions", "scale by multiplier", "scale longer dimension", "scale shorter dimension",
                "scale width", "scale height", "scale total pixels", "match size", "scale to multiple"]
SCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
# The widgets each resize_type shows after it (ComfyUI's DynamicCombo options), in order.
RESIZE_WIDGETS = {
    "scale dimensions": ["width", "height", "crop"], "scale by multiplier": ["multiplier"],
    "scale longer dimension": ["longer_size"], "scale shorter dimension": ["shorter_size"],
    "scale width": ["width"], "scale height": ["height"], "scale total pixels": ["megapixels"],
    "match size": ["crop"], "scale to multiple": ["multiple"],
}


def _sub(name: str, *args, **kw) -> Input:
    return Input(f"resize_type.{name}", *args, optional=True, **kw)


def target_size(h: int, w: int, kind: str, opts: dict, match=None) -> tuple[int, int, str] | None:
    """(width, height, crop) of ResizeImageMaskNode's resize_type (comfy_extras/nodes_post_processing.py),
    or None when the input stays as it is (width and height both 0)."""
    if kind == "scale dimensions":
        width, height = opts.get("width", 512), opts.get("height", 512)
        if width == 0 and height == 0:
            return None
        if width == 0:
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        return width, height, opts.get("crop", "center")
    if kind == "scale by multiplier":
        m = opts.get("multiplier", 1.0)
        return round(w * m), round(h * m), "disabled"
    if kind in ("scale longer dimension", "scale shorter dimension"):
        size = opts.get("longer_size" if "longer" in kind else "shorter_size", 512)
        first = h > w if "longer" in kind else h < w
        second = w > h if "longer" in kind else w < h
        if first:
            return round(w / h * size), size, "disabled"
        if second:
            return size, round(h / w * size), "disabled"
        return size, size, "disabled"
    if kind == "scale width":
        return target_size(h, w, "scale dimensions", {"width": opts.get("width", 512), "height": 0,
                                                      "crop": "disabled"})
    if kind == "scale height":
        return target_size(h, w, "scale dimensions", {"width": 0, "height": opts.get("height", 512),
                                                      "crop": "disabled"})
    if kind == "scale total pixels":
        s = math.sqrt(int(opts.get("megapixels", 1.0) * 1024 * 1024) / (w * h))
        return round(w * s), round(h * s), "disabled"
    if kind == "match size":
        if match is None:
            raise ValueError("resize_type 'match size' needs the resize_type.match input")
        m = _arr(match)
        return m.shape[2], m.shape[1], opts.get("crop", "center")
    raise ValueError(f"unknown resize_type {kind!r}; one of {RESIZE_TYPES}")


def _to_multiple(x: np.ndarray, multiple: int, method: str) -> np.ndarray:
    """scale_to_multiple_cover: scale so both sides cover the next-lower multiples, then centre-crop."""
    from ..wan.models.comfy_resize import resize_frames
    h, w = x.shape[1:3]
    tw, th = w // multiple * multiple, h // multiple * multiple
    if multiple <= 1 or tw == 0 or th == 0 or (tw, th) == (w, h):
        return x
    sw, sh = tw / w, th / h
    if sw >= sh:
        scaled_w, scaled_h = tw, max(th, int(math.ceil(h * sw)))
    else:
        scaled_h, scaled_w = th, max(tw, int(math.ceil(w * sh)))
    x = resize_frames(x, scaled_w, scaled_h, method, "disabled")
    x0, y0 = (scaled_w - tw) // 2, (scaled_h - th) // 2
    return x[:, y0:y0 + th, x0:x0 + tw]


@register_node
class ResizeImageMaskNode(Node):
    CATEGORY = "transform"
    DESCRIPTION = "Resize an image or mask using various scaling methods."
    # ComfyUI's resize_type is a DynamicCombo: the widgets after it depend on the choice
    # (RESIZE_WIDGETS); in API format they are "resize_type.<name>". The first choice's widgets come
    # first here so that a UI file saved with it maps positionally; see `ui_widget_names`.
    INPUTS = [Input("input", "IMAGE,MASK"),
              Input("resize_type", RESIZE_TYPES, default="scale dimensions"),
              _sub("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              _sub("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              _sub("crop", ["disabled", "center"], default="center"),
              Input("scale_method", SCALE_METHODS, default="area"),
              _sub("multiplier", "FLOAT", default=1.0, min=0.01, max=8.0, step=0.01),
              _sub("longer_size", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              _sub("shorter_size", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              _sub("megapixels", "FLOAT", default=1.0, min=0.01, max=16.0, step=0.01),
              _sub("multiple", "INT", default=8, min=1, max=MAX_RESOLUTION, step=1),
              _sub("match", "IMAGE,MASK")]
    OUTPUTS = [Output("resized", "IMAGE,MASK")]

    @classmethod
    def ui_widget_names(cls, widgets_values: list) -> list[str]:
        """The input names of a UI file's positional widgets_values: resize_type, its own widgets, scale_method."""
        kind = widgets_values[0] if widgets_values else "scale dimensions"
        return ["resize_type"] + [f"resize_type.{n}" for n in RESIZE_WIDGETS.get(kind, []) if n != "match"] \
            + ["scale_method"]

    def execute(self, ctx, input, resize_type="scale dimensions", scale_method="area", **opts):
        from ..wan.models.comfy_resize import resize_frames
        x = _arr(input)
        opts = {k.split(".", 1)[1]: v for k, v in opts.items() if k.startswith("resize_type.") and v is not None}
        if resize_type == "scale to multiple":
            return (_to_multiple(x, opts.get("multiple", 8), scale_method),)
        size = target_size(x.shape[1], x.shape[2], resize_type, opts, opts.get("match"))
        if size is None:
            return (x,)
        width, height, crop = size
        return (resize_frames(x, width, height, scale_method, crop),)
