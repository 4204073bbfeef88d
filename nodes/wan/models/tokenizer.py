"""The UMT5 tokenizer, read from a model folder's `tokenizer.json` (the
`tokenizers` library) or, failing that, its sentencepiece `spiece.model`.

Behaves like transformers' T5TokenizerFast called as the Wan pipelines call
it: `</s>` appended, truncated to max_length (EOS kept), padded with id 0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TokenizerOutput:
    input_ids: np.ndarray        # [B, max_length] int64
    attention_mask: np.ndarray   # [B, max_length] int64

    def __getitem__(self, key):
        return getattr(self, key)


class WanTokenizer:
    def __init__(self, backend, pad_id: int = 0, eos_id: int = 1, kind: str = "tokenizers"):
        self.backend, self.pad_id, self.eos_id, self.kind = backend, pad_id, eos_id, kind

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "WanTokenizer":
        folder = Path(folder)
        special = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (folder / name).exists():
                try:
                    special.update({k: v for k, v in json.loads((folder / name).read_text()).items()
                                    if k in ("pad_token", "eos_token")})
                except json.JSONDecodeError:
                    pass
        pad_tok = _token_text(special.get("pad_token", "<pad>"))
        eos_tok = _token_text(special.get("eos_token", "</s>"))
        if (folder / "tokenizer.json").exists():
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            tok.no_padding()
            tok.no_truncation()
            pad = tok.token_to_id(pad_tok)
            eos = tok.token_to_id(eos_tok)
            return cls(tok, 0 if pad is None else pad, 1 if eos is None else eos, "tokenizers")
        if (folder / "spiece.model").exists():
            import sentencepiece as spm
            sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
            pad = sp.piece_to_id(pad_tok) if sp.piece_to_id(pad_tok) != sp.unk_id() else 0
            eos = sp.piece_to_id(eos_tok) if sp.piece_to_id(eos_tok) != sp.unk_id() else sp.eos_id()
            return cls(sp, pad, eos, "sentencepiece")
        raise FileNotFoundError(f"{folder} has neither tokenizer.json nor spiece.model")

    def encode_one(self, text: str) -> list[int]:
        """Token ids of `text` with the trailing EOS, before truncation and padding."""
        if self.kind == "tokenizers":
            return list(self.backend.encode(text).ids)
        return list(self.backend.encode(text)) + [self.eos_id]

    def __call__(self, prompts: str | list[str], max_length: int = 512) -> TokenizerOutput:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens, got {max_length!r}")
        max_length = int(max_length)
        ids = np.full((len(prompts), max_length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), max_length), dtype=np.int64)
        for i, text in enumerate(prompts):
            toks = self.encode_one(text)
            if len(toks) > max_length:  # keep the EOS last, as T5's truncation does
                toks = toks[: max_length - 1] + [toks[-1]] if toks[-1] == self.eos_id else toks[:max_length]
            ids[i, : len(toks)] = toks
            mask[i, : len(toks)] = 1
        return TokenizerOutput(ids, mask)

    @classmethod
    def from_sentencepiece(cls, model: bytes) -> "WanTokenizer":
        """From a serialized sentencepiece model: ComfyUI's text-encoder files carry UMT5's as a
        `spiece_model` uint8 tensor. Pad `<pad>` and EOS `</s>` as T5's."""
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_proto=bytes(model))
        pad = sp.piece_to_id("<pad>") if sp.piece_to_id("<pad>") != sp.unk_id() else 0
        eos = sp.piece_to_id("</s>") if sp.piece_to_id("</s>") != sp.unk_id() else sp.eos_id()
        return cls(sp, pad, eos, "sentencepiece")


def _token_text(tok) -> str:
    return tok.get("content", "") if isinstance(tok, dict) else str(tok)
