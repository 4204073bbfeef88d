"""Prompt cleaning and encoding exactly as diffusers' Wan pipelines do it."""
from __future__ import annotations

import html
import re

import numpy as np
import mindspore as ms


def clean_prompt(text: str) -> str:
    """ftfy repair, HTML unescape (twice), whitespace collapsed and stripped."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:  # ftfy is a declared dependency; tolerate its absence like diffusers
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def encode_prompt(text_encoder, tokenizer, prompts: list[str], max_length: int = 512) -> ms.Tensor:
    """[B, max_length, D]: the encoder's last hidden state for each prompt's tokens
    (EOS included), exact zeros for the rows past them (diffusers' `max_sequence_length`)."""
    tokens = tokenizer([clean_prompt(p) for p in prompts], max_length=max_length)
    hidden = text_encoder(tokens.input_ids, tokens.attention_mask)
    keep = ms.Tensor((tokens.attention_mask > 0).astype(np.float32)[:, :, None])
    return (hidden.astype(ms.float32) * keep).astype(hidden.dtype)
