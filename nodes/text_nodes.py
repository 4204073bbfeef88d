"""Text conditioning nodes."""
from __future__ import annotations

from graphrt import Input, Node, Output, register_node


@register_node
class WanTextEncode(Node):
    CATEGORY = "conditioning/wan"
    DESCRIPTION = ("Encodes a prompt with UMT5 as the Wan pipelines do (cleaned text, 512 tokens, rows past "
                   "the prompt zeroed). An empty prompt gives diffusers' default negative.")
    INPUTS = [Input("text_encoder", "TEXT_ENCODER"),
              Input("text", "STRING", default="", multiline=True, tooltip="The prompt.")]
    OUTPUTS = [Output("conditioning", "CONDITIONING")]

    def execute(self, ctx, text_encoder, text=""):
        return (text_encoder.encode(text),)
