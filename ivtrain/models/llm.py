"""The causal LLM of stage 3: any transformers causal LM in a local directory (Llama, Mistral, Qwen families, through
the Auto classes), its tokenizer and chat template, frozen, with LoRA adapters (peft) on chosen modules.

The chat template is the LLM's own (`chat_template` in tokenizer_config.json, or chat_template.jinja beside it), or
a Jinja file the recipe names (`llm.chat_template`), which then replaces it wherever the tokenizer is loaded:
training workers, `iv chat`, and the directory `iv export model` writes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

# LLaMA-style names of the attention and MLP projections (Llama, Mistral, Qwen2/3, ...), and the output layer
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


class LLMError(ValueError):
    """An LLM directory that cannot serve: missing, not a causal LM, no chat template, no such LoRA target."""


@dataclass
class LoraSettings:
    r: int = 16                      # 0: no adapters, the LLM stays wholly frozen
    alpha: int = 32
    dropout: float = 0.1
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


@dataclass
class LLMConfig:
    path: str = ""                   # a transformers causal-LM directory (config, weights, tokenizer)
    chat_template: str = ""          # a Jinja file replacing the directory's chat template ("" keeps it)
    lora: LoraSettings = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"


NO_TEMPLATE = ("{path} has no chat template: its tokenizer_config.json holds no `chat_template` and no "
               "chat_template.jinja lies beside it. Give one with llm.chat_template=FILE.jinja (a Jinja template over "
               "`messages` with roles system/user/assistant and `add_generation_prompt`, as transformers' "
               "apply_chat_template reads it), or add it to the directory")


@functools.lru_cache(maxsize=8)
def load_llm_tokenizer(path: str, chat_template: str = ""):
    """The LLM's tokenizer with its chat template (the recipe's file when given); loaded once per process."""
    if not Path(path).is_dir():
        raise LLMError(f"LLM directory {path} does not exist")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:   # no tokenizer files, or files transformers cannot read
        raise LLMError(f"{path} holds no tokenizer transformers can load ({type(e).__name__}: {e})") from None
    if chat_template:
        template = Path(chat_template)
        if not template.is_file():
            raise LLMError(f"llm.chat_template {chat_template} is not a file")
        tokenizer.chat_template = template.read_text()
    if not tokenizer.chat_template:
        raise LLMError(NO_TEMPLATE.format(path=path))
    if tokenizer.pad_token_id is None:   # padding is masked out; any id serves (VideoChat2 pads with eos)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def llm_dtype(bf16: bool) -> torch.dtype:
    return torch.bfloat16 if bf16 else torch.float32


def load_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM, every weight frozen, with LoRA adapters (trainable) on `cfg.lora.targets` when r > 0."""
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise LLMError(f"LLM directory {path} has no config.json")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                     attn_implementation=cfg.attn_implementation)
    except ValueError as e:   # a config transformers has no causal-LM class for
        raise LLMError(f"{path} ({config.model_type}) does not load as a causal LM: {e}") from None
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return add_lora(model, cfg.lora) if cfg.lora.r > 0 else model


def add_lora(model: nn.Module, lora: LoraSettings) -> nn.Module:
    """The model wrapped by peft with adapters on every module whose name ends with one of `lora.targets`."""
    from peft import LoraConfig, TaskType, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in lora.targets if t not in names]
    if missing:
        raise LLMError(f"llm.lora.targets {missing} name no linear layer of this LLM (its linear layers: "
                       f"{', '.join(sorted(names))})")
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.targets))
    return get_peft_model(model, config)


def is_lora_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def merged_llm(model: nn.Module) -> nn.Module:
    """The plain transformers model with the adapters folded into its weights (W + B A x alpha / r)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def llm_flops(model: nn.Module, tokens: int, sequences: int = 1) -> float:
    """Forward FLOPs (2 per multiply-add) of `sequences` sequences of `tokens` tokens: every linear layer (the
    adapters included) on each token, and the attention's two matmuls over the (tokens x tokens) scores."""
    config = model.config
    heads = config.num_attention_heads
    width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
    linear = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return float(sequences * (tokens * linear + 4 * tokens * tokens * width * config.num_hidden_layers))
