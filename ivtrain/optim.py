"""The warmup + cosine LR schedule, as released: lr per a base batch scaled by the global batch, warmup from 0.

(Parameter groups are the objective's: ivtrain.objectives.base.tower_param_groups.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ivtrain.config import OptimConfig


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
