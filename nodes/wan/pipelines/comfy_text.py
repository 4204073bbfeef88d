"""Prompt encoding as ComfyUI's CLIPTextEncode does it for Wan (UMT5-XXL), and its text-encoder files.

ComfyUI (comfy/sd1_clip.py `SDTokenizer.tokenize_with_weights`, `SDClipModel.forward`;
comfy/text_encoders/wan.py) tokenizes a prompt this way:

- `(words:1.3)` / `(words)` (×1.1, nested) give weights; `\\(` `\\)` are literal parentheses;
- each weighted segment is tokenized whole by sentencepiece and its EOS dropped; one EOS (id 1)
  ends the prompt, then pad id 0 up to at least 512 tokens. There is no truncation: a prompt of
  more than 511 tokens gives more than 512 rows;
- the attention mask covers the tokens up to the first EOS, padded keys are masked, and the rows
  past the EOS are zeroed (`zero_out_masked`);
- when a weight is not 1, the prompt's rows are moved away from those of an empty prompt (EOS then
  pads, same length): z = (z − z_empty)·w + z_empty.

For a prompt without weights this is numerically diffusers' Wan prompt encoding (its
T5TokenizerFast is converted from the same sentencepiece model, mask and zeroed rows are the
same), except that diffusers first cleans the text (ftfy, HTML unescape, whitespace collapsed),
truncates at 512 tokens, and maps an empty negative prompt to "" as well; sentencepiece's own
normalisation already collapses whitespace, so ordinary prompts give the same tokens.

ComfyUI's text-encoder files (umt5_xxl_fp16 / fp8_e4m3fn_scaled .safetensors) hold the tokenizer
as a uint8 tensor `spiece_model`; `load_comfy_text` reads it from there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import mindspore as ms

from ..checkpoints.checkpoint import Checkpoint
from ..models.tokenizer import WanTokenizer
from .components import load_text, text_encoder_on_demand
from .conditioning import WanTextEncoder

SPIECE_KEY = "spiece_model"
MIN_LENGTH = 512


def embedded_tokenizer(path: str | Path) -> WanTokenizer | None:
    """The sentencepiece tokenizer stored in a ComfyUI text-encoder file, or None if it has none."""
    ckpt = Checkpoint([Path(path)])
    if SPIECE_KEY not in ckpt:
        return None
    data = np.asarray(ckpt.get(SPIECE_KEY))
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: '{SPIECE_KEY}' should be a uint8 tensor (a serialized sentencepiece model), "
                         f"got {data.dtype}")
    return WanTokenizer.from_sentencepiece(data.tobytes())


def load_comfy_text(path: str | Path, dtype="float32") -> WanTextEncoder:
    """The UMT5 encoder of a single file with the tokenizer it carries; a file without one
    (Wan-AI's .pth) gets the shared Wan tokenizer as `components.load_text` finds it."""
    tokenizer = embedded_tokenizer(path)
    if tokenizer is None:
        return load_text(str(path), dtype)
    return WanTextEncoder(encoder=text_encoder_on_demand(str(path), dtype), tokenizer=tokenizer)


# ---- ComfyUI's prompt weighting syntax (comfy/sd1_clip.py parse_parentheses / token_weights) ----------

_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def _escape(text: str) -> str:
    for a, b in _ESCAPES:
        text = text.replace(a, b)
    return text


def _unescape(text: str) -> str:
    for a, b in _ESCAPES:
        text = text.replace(b, a[1])
    return text


def _top_level_groups(text: str) -> list[str]:
    """Split into plain runs and top-level "( ... )" groups (an unclosed group runs to the end)."""
    out, current, depth = [], "", 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    out.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                out.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        out.append(current)
    return out


def weighted_segments(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """[(segment, weight)]: "(x)" multiplies by 1.1, "(x:w)" sets w, nesting composes."""
    out = []
    for part in _top_level_groups(text):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner = part[1:-1]
            w = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    w = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += weighted_segments(inner, w)
        else:
            out.append((part, weight))
    return out


def comfy_prompt_tokens(tokenizer: WanTokenizer, text: str, min_length: int = MIN_LENGTH):
    """(ids, weights, n_attended) of `text` as ComfyUI tokenizes it for UMT5."""
    ids, weights = [], []
    for segment, w in weighted_segments(_escape(text)):
        segment = _unescape(segment)
        if not segment:
            continue
        toks = tokenizer.encode_one(segment)
        if toks and toks[-1] == tokenizer.eos_id:
            toks = toks[:-1]
        ids += toks
        weights += [w] * len(toks)
    ids.append(tokenizer.eos_id)
    weights.append(1.0)
    attended = len(ids)
    if len(ids) < min_length:
        weights += [1.0] * (min_length - len(ids))
        ids += [tokenizer.pad_id] * (min_length - len(ids))
    return ids, weights, attended


def _encode_ids(encoder, ids: list[int], attended: int) -> np.ndarray:
    mask = np.zeros((1, len(ids)), np.int64)
    mask[0, :attended] = 1
    hidden = encoder(np.asarray([ids], np.int64), mask)
    return hidden.astype(ms.float32).asnumpy() * mask[:, :, None].astype(np.float32)


def encode_comfy_prompt(text_encoder: WanTextEncoder, text: str, min_length: int = MIN_LENGTH) -> ms.Tensor:
    """[1, max(512, tokens), D] float32: ComfyUI's CLIPTextEncode output for a Wan text encoder."""
    tok = text_encoder.tokenizer
    ids, weights, attended = comfy_prompt_tokens(tok, text, min_length)
    z = _encode_ids(text_encoder.encoder, ids, attended)
    w = np.asarray(weights, np.float32)
    if np.any(w != 1.0):
        empty = [tok.eos_id] + [tok.pad_id] * (len(ids) - 1)
        z_empty = _encode_ids(text_encoder.encoder, empty, 1)
        z = np.where((w != 1.0)[None, :, None], (z - z_empty) * w[None, :, None] + z_empty, z)
    return ms.Tensor(z.astype(np.float32))
