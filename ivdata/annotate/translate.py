"""Translation of non-English transcripts to English, pluggable behind one protocol.

- seq2seq: a transformers encoder-decoder from a local dir (Marian opus-mt-*-en, NLLB, M2M100, ...).
  For multilingual tokenizers, `src_lang_codes` maps Whisper's language code to the tokenizer's
  (e.g. {"de": "deu_Latn", "en": "eng_Latn"}); the "en" entry is forced as the first generated token.
- llm: any fuse.TextGenerator with the translation prompt (the same LLM that fuses captions).
"""
from __future__ import annotations

import os
from typing import Protocol

from ivdata.annotate.config import TranslateConfig
from ivdata.annotate.fuse import TextGenerator, clean_caption
from ivdata.annotate.prompts import TRANSLATE, prompt_hash, translate_prompt


class Translator(Protocol):
    name: str

    def translate(self, texts: list[str], src_lang: str) -> list[str]: ...


class Seq2SeqTranslator:
    def __init__(self, model_dir: str, device: str = "cpu", src_lang_codes: dict[str, str] | None = None,
                 max_new_tokens: int = 256):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.device, self.codes, self.max_new_tokens = device, src_lang_codes or {}, max_new_tokens
        self.name = f"seq2seq:{os.path.basename(os.path.normpath(model_dir))}"

    def translate(self, texts: list[str], src_lang: str) -> list[str]:
        if src_lang in self.codes and hasattr(self.tok, "src_lang"):
            self.tok.src_lang = self.codes[src_lang]
        kwargs = {}
        if "en" in self.codes:
            kwargs["forced_bos_token_id"] = self.tok.convert_tokens_to_ids(self.codes["en"])
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, **kwargs)
        return [t.strip() for t in self.tok.batch_decode(out, skip_special_tokens=True)]


class LlmTranslator:
    def __init__(self, generator: TextGenerator):
        self.generator = generator
        self.name = f"llm:{generator.name}"

    def translate(self, texts: list[str], src_lang: str) -> list[str]:
        answers = self.generator.generate([translate_prompt(t, src_lang) for t in texts])
        return [clean_caption(a, max_chars=4000) for a in answers]


def load_translator(cfg: TranslateConfig, device: str = "cpu", generator: TextGenerator | None = None):
    if cfg.backend == "none":
        return None
    if cfg.backend == "seq2seq":
        return Seq2SeqTranslator(cfg.model, device, cfg.src_lang_codes, cfg.max_new_tokens)
    if generator is None:
        raise ValueError("translate.backend llm needs a fuse backend to translate with")
    return LlmTranslator(generator)


def translate_hash(cfg: TranslateConfig, translator_name: str | None) -> str:
    """What about translation changes an S caption: the backend, its model, and the prompt for an LLM."""
    return prompt_hash(cfg.backend, translator_name, TRANSLATE if cfg.backend == "llm" else None, cfg.src_lang_codes)
