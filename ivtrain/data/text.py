"""Captions out of a sample's json, and tokenizers from local directories (loaded once per process)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch


class TokenizerError(ValueError):
    """A tokenizer directory is missing or does not load."""


@functools.lru_cache(maxsize=16)
def load_tokenizer(path: str):
    """A transformers tokenizer from a local directory; loaded once per process (each loader worker keeps its own)."""
    if not Path(path).is_dir():
        raise TokenizerError(f"tokenizer directory {path} does not exist")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:   # a directory without tokenizer files, or one transformers cannot read
        raise TokenizerError(f"{path} holds no tokenizer transformers can load ({type(e).__name__}: {e})") from None
    if tokenizer.pad_token_id is None:
        raise TokenizerError(f"tokenizer {path} has no pad token: batches of captions need one to pad with")
    return tokenizer


def choose_caption(meta: dict, kinds: tuple[str, ...]) -> tuple[str, str] | None:
    """(kind, text) of the first kind in `kinds` whose caption is present and not blank, else None. Captions sit
    in the json's `captions` as a string per kind, or as {"text": ..., ...} with their provenance."""
    captions = meta.get("captions") or {}
    for kind in kinds:
        value = captions.get(kind)
        text = value.get("text") if isinstance(value, dict) else value
        if isinstance(text, str) and text.strip():
            return kind, text.strip()
    return None


def tokenize(text: str, tokenizer_dir: str, max_length: int) -> torch.Tensor:
    """Token ids (special tokens included), truncated to max_length; padding is the collate's."""
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def pad_id(tokenizer_dir: str) -> int:
    return int(load_tokenizer(tokenizer_dir).pad_token_id)
