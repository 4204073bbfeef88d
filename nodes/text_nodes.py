"""Text conditioning nodes."""
from __future__ import annotations

from graphrt import Input, Node, Output, register_node

MAX_LENGTH_TIP = ("Text tokens the prompt is padded or truncated to (diffusers' max_sequence_length). 512 is what "
                  "every Wan pipeline uses, and diffusers' image-to-video pipeline (I2V / FLF2V) forces it: Wan2.1 "
                  "I2V / FLF2V models need 512. The rows past the prompt are zeros but still pass through the text "
                  "embedder and the (un-masked) cross-attention, so another length gives another video.")


@register_node
class WanTextEncode(Node):
    CATEGORY = "conditioning/wan"
    DISK_CACHE = True       # a prompt encoding: small, and it spares loading the text encoder on a rerun
    DESCRIPTION = ("Encodes a prompt with UMT5 as the Wan pipelines do (cleaned text, max_length tokens: 512 as "
                   "in every Wan pipeline, rows past the prompt zeroed). An empty prompt gives diffusers' default "
                   "negative.")
    INPUTS = [Input("text_encoder", "TEXT_ENCODER"),
              Input("text", "STRING", default="", multiline=True, tooltip="The prompt."),
              Input("max_length", "INT", default=512, min=1, max=4096, optional=True, tooltip=MAX_LENGTH_TIP)]
    OUTPUTS = [Output("conditioning", "CONDITIONING")]

    def execute(self, ctx, text_encoder, text="", max_length=512):
        return (text_encoder.encode(text, max_length=int(max_length)),)
