"""Tiny random-weight models for the stage-3 recipes on a CPU: a causal LM with a chat template, and a BERT-style
QFormer directory (config, weights, tokenizer). Their outputs are noise until trained; they go through the same
loading, templating, LoRA and generation code as a 7B LLM and bert-base.

Both tokenizers are trained here on a small built-in text (deterministically), so any text tokenizes: the LLM's is
byte-level BPE (every string round-trips through encode and decode), the QFormer's a lower-cased WordPiece like
BERT's.
"""
from __future__ import annotations

from pathlib import Path

import torch

# The chat template of the tiny LLM: one role header and an end-of-turn token per message, as the instruct LLMs
# of the Llama 3 / Qwen families format them.
TINY_CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
                      "{{ message['content'] }}{{ '<|end|>' }}{% endfor %}"
                      "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
LLM_SPECIAL = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

CORPUS = """which way does the square move ? the square moves left . the square moves right . it moves up .
it moves down . describe the video . what happens in the video ? what is in the image ? a red square and a
blue disc move together over a dark ground . the shapes slowly enter from the border and leave the frame .
<Video> </Video> <Image> </Image> answer with one word : left , right , up or down .
a man rides a bike on a road . a dog runs in the park . people talk in a room with music and a tone .
the camera pans across the city at night . two cars drive down a street . a child plays with a ball .
yes no maybe one two three four five many colour colours black white green yellow purple orange grey
0 1 2 3 4 5 6 7 8 9 ( ) [ ] { } ' " ! ; / - _ + = * % & # @ $ ^ ~ ` | \\ < >"""


def _corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() for _ in range(4)]


def write_tiny_llm_tokenizer(path: str | Path, vocab_size: int = 384):
    """A byte-level BPE tokenizer with the tiny chat template, saved as a transformers directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLM_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus_lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
                                   additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"])
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def write_tiny_qformer_tokenizer(path: str | Path):
    """A lower-cased WordPiece tokenizer with BERT's special tokens and [CLS] A [SEP] framing. Its vocabulary is
    the built-in text's words and characters (and each character as a word piece), listed in a fixed order."""
    import re

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for w in re.findall(r"\w+|[^\w\s]", CORPUS.lower())})
    chars = sorted(set("".join(words)))
    vocab = {t: i for i, t in enumerate(dict.fromkeys(special + chars + [f"##{c}" for c in chars] + words))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                 ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(path)
    return fast


def save_tiny_llm(path: str | Path, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                  seed: int = 0) -> Path:
    """A random Llama-architecture causal LM (+ its tokenizer and chat template) as a transformers directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = write_tiny_llm_tokenizer(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def save_tiny_qformer(path: str | Path, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """A random BERT (config, weights, WordPiece tokenizer) for the QFormer to start from, as bert-base would."""
    from transformers import BertConfig, BertForMaskedLM

    path = Path(path)
    tok = write_tiny_qformer_tokenizer(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(cfg).save_pretrained(path)
    return path


def save_tiny_vision_run(path: str | Path, seed: int = 0, **vit) -> Path:
    """A run directory (export.json + encoder.safetensors) holding a random tiny InternVideo2, for stage-3 runs that
    start without an earlier stage; `vit` overrides fields of the tiny preset (tubelet_size, num_frames, ...)."""
    from ivtrain.export import write_export
    from ivtrain.models.vit import InternVideo2, ViTConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    encoder = InternVideo2(ViTConfig(size="tiny", **vit))
    write_export(path, "random_init", {"encoder": encoder.state_dict()},
                 {**encoder.config(), "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    return path
