"""Parameter groups (weight decay, layer-wise LR decay) and the warmup + cosine LR schedule."""
from __future__ import annotations

import math
import re

import torch.nn as nn

from ivtrain.config import OptimConfig

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("patch_embed", "cls_token", "pos_embed")


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i+1 for transformer block i, depth+1 for everything after (heads)."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in _EMBED for part in name.split(".")):
        return 0
    return depth + 1


def param_groups(module: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups: no decay on biases, norms, tokens and position tables; LR scaled per layer.

    Each group carries `lr_scale`; its starting lr is cfg.lr * lr_scale and the schedule multiplies it.
    """
    depth = max((int(m.group(1)) + 1 for n, _ in module.named_parameters() if (m := _BLOCK.search(n))), default=0)
    groups: dict[tuple, dict] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        lid = layer_id(name, depth)
        scale = cfg.layer_decay ** (depth + 1 - lid) if cfg.layer_decay < 1.0 else 1.0
        key = (lid if cfg.layer_decay < 1.0 else 0, no_decay)
        g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                                    "lr": cfg.lr * scale, "lr_scale": scale})
        g["params"].append(p)
    return list(groups.values())


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of each group's base lr at optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
