"""VACE nodes: control video / mask / reference images -> conditioning for Wan VACE models."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from graphrt import Input, Node, Output, register_node

from .latent_nodes import check_video_size


def _frames(images):
    return None if images is None else np.asarray(images.asnumpy() if hasattr(images, "asnumpy") else images,
                                                  np.float32)


@register_node
class WanVaceConditioning(Node):
    CATEGORY = "conditioning/wan"
    DESCRIPTION = ("Conditions a Wan VACE model on a control video (kept where the mask is black, regenerated "
                   "where it is white) and optional reference images; gives the latent to denoise and how many "
                   "leading latent frames (the references) to trim before decoding.")
    INPUTS = [
        Input("positive", "CONDITIONING"),
        Input("negative", "CONDITIONING"),
        Input("vae", "VAE"),
        Input("width", "INT", default=832, min=16, max=8192, step=16),
        Input("height", "INT", default=480, min=16, max=8192, step=16),
        Input("num_frames", "INT", default=81, min=1, max=10001, step=4),
        Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01,
              tooltip="Scale of the VACE hints (diffusers' conditioning_scale)."),
        Input("control_video", "IMAGE", optional=True,
              tooltip="num_frames frames of width×height (resize first). None: nothing to keep."),
        Input("control_masks", "IMAGE", optional=True,
              tooltip="White = generate, black = keep the control video. None: generate everything."),
        Input("reference_image", "IMAGE", optional=True,
              tooltip="Reference image(s) of one size (each frame one reference), fitted into the frame on white."),
        Input("reference_images", "IMAGE_LIST", optional=True,
              tooltip="Reference images of any sizes (an ImageList), each fitted into the frame on white; they "
                      "follow reference_image's frames, in diffusers' reference_images order."),
    ]
    OUTPUTS = [Output("positive", "CONDITIONING"), Output("negative", "CONDITIONING"), Output("latent", "LATENT"),
               Output("trim_latent", "INT")]

    @classmethod
    def validate_inputs(cls, width=832, height=480, num_frames=81, **_):
        return check_video_size(width, height, num_frames) or None

    def execute(self, ctx, positive, negative, vae, width, height, num_frames, strength=1.0, control_video=None,
                control_masks=None, reference_image=None, reference_images=None):
        import mindspore as ms
        from .image_nodes import image_list_items
        from .wan.pipelines.vace_conditioning import VACE_CONTROL, VACE_STRENGTH, vace_control
        refs = [] if reference_image is None else image_list_items(reference_image, "reference_image")
        if reference_images is not None:
            if not isinstance(reference_images, (list, tuple)):
                raise ValueError(f"reference_images: expected an IMAGE_LIST, got {type(reference_images).__name__}")
            for i, image in enumerate(reference_images):
                refs += image_list_items(image, f"reference_images[{i}]")
        control, n_refs = vace_control(vae, height, width, num_frames, video=_frames(control_video),
                                       mask=_frames(control_masks), reference_images=refs)
        control = ms.Tensor(control)
        extras = {VACE_CONTROL: control, VACE_STRENGTH: float(strength)}
        pos = replace(positive, extras={**positive.extras, **extras})
        neg = replace(negative, extras={**negative.extras, **extras})
        s, t = vae.spatial_compression, vae.temporal_compression
        shape = (1, vae.z_dim, n_refs + (num_frames - 1) // t + 1, height // s, width // s)
        return (pos, neg, {"samples": ms.Tensor(np.zeros(shape, np.float32)), "empty": True, "normalized": True},
                n_refs)


@register_node
class WanTrimVideoLatent(Node):
    CATEGORY = "latent/wan"
    DESCRIPTION = "Drops the first latent frames (VACE reference frames) before decoding."
    INPUTS = [Input("latent", "LATENT"), Input("trim_amount", "INT", default=0, min=0, max=10000)]
    OUTPUTS = [Output("latent", "LATENT")]

    def execute(self, ctx, latent, trim_amount=0):
        samples = latent["samples"]
        if trim_amount >= samples.shape[2]:
            raise ValueError(f"cannot trim {trim_amount} of the latent's {samples.shape[2]} frames")
        return ({**latent, "samples": samples[:, :, trim_amount:]},)
