"""Node types the server tests load with `--nodes tests.server.toy_nodes`: a slow counter
with progress and previews, a failing node, and nodes that take files from folders."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from graphrt import Input, Node, Output, register_node


@register_node
class SrvCount(Node):
    CATEGORY = "test/server"
    DESCRIPTION = "Counts to `steps`, sleeping `delay` seconds per step, with progress and a preview per step."
    INPUTS = [Input("steps", "INT", default=5, min=1, max=100000),
              Input("delay", "FLOAT", default=0.0, min=0.0, max=10.0, step=0.01),
              Input("tag", "STRING", default="")]
    OUTPUTS = [Output("count", "INT")]
    OUTPUT_NODE = True

    def execute(self, ctx, steps, delay, tag=""):
        for i in range(steps):
            if delay:
                time.sleep(delay)
            if ctx.wants_preview:
                ctx.preview(np.full((16, 24, 3), (i + 1) / steps, np.float32))
            ctx.progress(i + 1, steps)
        ctx.ui(text=f"{tag}:{steps}")
        return (steps,)


@register_node
class SrvFail(Node):
    CATEGORY = "test/server"
    DESCRIPTION = "Raises."
    INPUTS = [Input("message", "STRING", default="boom")]
    OUTPUTS = []
    OUTPUT_NODE = True

    def execute(self, ctx, message):
        raise RuntimeError(message)


@register_node
class SrvModelFile(Node):
    CATEGORY = "test/server"
    DESCRIPTION = "Reports the size of a file picked from the models' loras folder."
    FOLDER_INPUTS = {"lora": "loras"}
    INPUTS = [Input("lora", "STRING", default="none")]
    OUTPUTS = [Output("size", "INT")]
    OUTPUT_NODE = True

    @classmethod
    def validate_inputs(cls, lora="", **_):
        return None if Path(lora).is_file() else f"lora file not found: {lora!r}"

    def execute(self, ctx, lora):
        ctx.ui(text=str(Path(lora).stat().st_size))
        return (Path(lora).stat().st_size,)


@register_node
class SrvCopyImage(Node):
    CATEGORY = "test/server"
    DESCRIPTION = "Loads an uploaded image and saves it into the output folder as PNG."
    FOLDER_INPUTS = {"image": "input"}
    INPUTS = [Input("image", "STRING", default="")]
    OUTPUTS = []
    OUTPUT_NODE = True

    @classmethod
    def validate_inputs(cls, image="", **_):
        return None if Path(image).is_file() else f"no such image: {image!r}"

    def execute(self, ctx, image):
        from PIL import Image
        out = ctx.output_dir / "copies"
        out.mkdir(parents=True, exist_ok=True)
        target = out / (Path(image).stem + "_copy.png")
        with Image.open(image) as img:
            img.convert("RGB").save(target)
        ctx.ui(files=[str(target)])
        return ()
