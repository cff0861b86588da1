"""Parameter groups (weight decay, layer-wise LR decay) and the warmup + cosine LR schedule."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

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


def param_groups(module: nn.Module, cfg: OptimConfig, peak_lr: float | None = None) -> list[dict]:
    """AdamW groups: no decay on biases, norms, tokens and position tables; LR scaled per layer.

    Each group carries `lr_scale`; its starting lr is peak_lr (default cfg.lr) * lr_scale and the schedule
    multiplies it.
    """
    peak_lr = cfg.lr if peak_lr is None else peak_lr
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
                                    "lr": peak_lr * scale, "lr_scale": scale})
        g["params"].append(p)
    return list(groups.values())


@dataclass(frozen=True)
class Schedule:
    """The run's lr schedule in absolute numbers: what the recipe's optim and train sections mean once the global
    batch and the size of an epoch are known."""
    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int


def resolve_schedule(optim: OptimConfig, steps: int, epochs: float, global_batch: int,
                     samples_per_epoch: int) -> Schedule:
    """lr and min_lr scaled by global_batch / optim.lr_base_batch when that is set (the release gives them per 256
    samples); epochs (train.epochs, optim.warmup_epochs) turned into steps of `global_batch` samples."""
    scale = global_batch / optim.lr_base_batch if optim.lr_base_batch else 1.0
    steps_per_epoch = samples_per_epoch // global_batch
    if (epochs or optim.warmup_epochs) and steps_per_epoch == 0:
        raise ValueError(f"an epoch of {samples_per_epoch} samples holds no step of {global_batch}: give "
                         "train.steps and optim.warmup_steps instead of epochs")
    total = steps or int(epochs * steps_per_epoch)
    warmup = optim.warmup_steps or int(optim.warmup_epochs * steps_per_epoch)
    if total <= 0:
        raise ValueError(f"train.epochs={epochs} of {steps_per_epoch} steps each is no step at all")
    return Schedule(optim.lr * scale, optim.min_lr * scale, warmup, total)


def lr_factor(step: int, schedule: Schedule) -> float:
    """Multiplier of each group's peak lr at optimizer step `step` (0-based), the released schedule: a linear warmup
    from 0 that reaches the peak at its last step (numpy's linspace(0, peak, warmup)), then a cosine from the peak
    toward min_lr over the remaining steps."""
    warmup = schedule.warmup_steps
    if step < warmup:
        return step / (warmup - 1) if warmup > 1 else 0.0
    progress = (step - warmup) / max(1, schedule.total_steps - warmup)
    floor = schedule.min_lr / schedule.peak_lr if schedule.peak_lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
