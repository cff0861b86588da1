"""The objective contract: everything the engine, the loader and the evaluations may ask of an objective, and
nothing else. An objective owns its trainable modules and frozen teachers and maps a batch to (loss, metrics); it
knows nothing about DeepSpeed, and the engine knows nothing about stages.

What an objective declares (class attributes):
  name                 the `objective:` value of its recipes
  Config               the dataclass of its recipe section (validated by `validate`)
  prepare_name         how metrics name the time `prepare` takes ("teachers" for stage 1: time/teachers_s)
  throughput_unit      "samples" or "tokens": what `count` counts and the console reports per second

What the engine calls, in order:
  __init__(recipe, device, dist)   build towers; frozen ones loaded from their sources (`init_from`)
  sample_spec()                    what the loader must deliver from each sample (ivtrain.data.spec)
  collate(samples, spec)           samples -> batch (runs in the loader's workers; default pads and masks)
  param_groups(optim, peak_lr)     AdamW groups: per-tower lr multipliers (`towers`), layer decay, no decay on
                                   norms / biases / tokens / position tables
  prepare(batch) -> inputs         no-grad work on the device: normalization, teachers, masks
  trainable(**inputs)              nn.Module: -> (loss, {metric name: tensor})
  flops(batch) -> {name: FLOPs}    FLOPs of this real batch: trainable ones counted forward + backward (3x),
                                   frozen ones forward; their sum divided by time gives FLOP/s and MFU
  count(batch) -> int              throughput units in the batch
  export(state_dict) -> artifacts  {artifact name: state dict} in the layouts evaluations and later stages read
  encoder_config() -> dict         how to rebuild the encoder evaluations use (ivtrain.models.vit.encoder_from_config)
                                   and the input normalization it expects (mean, std)
  encoder_config_of(recipe)        (classmethod) the same for the encoder a recipe would train, without building
                                   teachers: evaluations build a randomly initialized baseline from it

Frozen parameters (requires_grad False) never enter the optimizer (param_groups skips them) nor the checkpoints
(the engine saves without them and the objective rebuilds them from their source). `dist` gives the rank, the
world size and an all-gather whose gradient is exact, for losses over the global batch.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ivtrain.config import OptimConfig, Recipe
from ivtrain.data.collate import collate as default_collate
from ivtrain.data.spec import SampleSpec
from ivtrain.engine.distributed import DistContext

# a numbered layer in any tower: blocks.3. (ViT), layers.3. (ModernBERT, LLMs), layer.3. (BERT), h.3. (GPT-2)
NUMBERED = re.compile(r"(?:^|\.)(?:blocks|layers|layer|h)\.(\d+)\.")
# parameters that sit before a tower's numbered layers (layer id 0 under layer decay)
EMBEDDING_PARTS = ("patch_embed", "cls_token", "pos_embed", "img_pos_embed", "embeddings", "embed_tokens", "wte")
NO_DECAY_SUFFIXES = ("cls_token", "pos_embed", "query_tokens", "mask_token", "temp")


@dataclass(frozen=True)
class Tower:
    """A named part of the trainable module: its parameter-name prefix and its lr multiplier."""
    prefix: str
    lr_mult: float = 1.0


class Objective(abc.ABC):
    name: ClassVar[str]
    Config: ClassVar[type]
    prepare_name: ClassVar[str] = "prepare"
    throughput_unit: ClassVar[str] = "samples"

    trainable: nn.Module

    def __init__(self, recipe: Recipe, device: torch.device, dist: DistContext | None = None):
        self.recipe, self.device, self.dist = recipe, device, dist or DistContext(device=device)

    @classmethod
    def validate(cls, recipe: Recipe) -> None:
        """Rules tying the objective's section to the common ones (raise ivtrain.config.ConfigError)."""

    @abc.abstractmethod
    def sample_spec(self) -> SampleSpec:
        ...

    def collate(self, samples: list[dict], spec: SampleSpec) -> dict:
        return default_collate(samples, spec)

    @abc.abstractmethod
    def prepare(self, batch: dict) -> dict[str, Any]:
        ...

    def towers(self) -> list[Tower]:
        """The trainable module's towers, each with its own lr multiplier; one tower of everything by default."""
        return [Tower("")]

    def param_groups(self, optim: OptimConfig, peak_lr: float) -> list[dict]:
        return tower_param_groups(self.trainable, self.towers(), optim, peak_lr)

    @abc.abstractmethod
    def flops(self, batch: dict) -> dict[str, float]:
        ...

    def count(self, batch: dict) -> int:
        return int(batch["size"])

    @abc.abstractmethod
    def export(self, state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        ...

    @abc.abstractmethod
    def encoder_config(self) -> dict:
        ...

    @classmethod
    @abc.abstractmethod
    def encoder_config_of(cls, recipe: Recipe) -> dict:
        ...

    @classmethod
    def write_tiny_assets(cls, out) -> dict[str, str]:
        """Write the tiny models this objective's tiny recipe needs under `out` (`iv models tiny`); name -> path."""
        return {}


def layer_of(name: str, depth: int) -> int:
    """0 for a tower's embeddings, i+1 for its numbered layer i, depth+1 for everything after (heads, norms)."""
    match = NUMBERED.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in EMBEDDING_PARTS for part in name.split(".")):
        return 0
    return depth + 1


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES)


def tower_param_groups(module: nn.Module, towers: list[Tower], optim: OptimConfig, peak_lr: float) -> list[dict]:
    """AdamW groups over the trainable parameters. A parameter belongs to the tower with the longest matching
    prefix; its lr is peak_lr x the tower's multiplier x layer_decay^(depth + 1 - layer) where the tower has
    numbered layers (layer decay < 1); norms, biases, tokens, position tables and temperatures get no decay.
    Each group carries `lr_scale`, its lr relative to peak_lr, which the schedule multiplies."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    by_tower: dict[str, list] = {t.prefix: [] for t in towers}
    for n, p in named:
        prefix = max((t.prefix for t in towers if n.startswith(t.prefix)), key=len, default=None)
        if prefix is None:
            raise ValueError(f"parameter {n} belongs to no tower ({[t.prefix for t in towers]})")
        by_tower[prefix].append((n, p))
    groups: dict[tuple, dict] = {}
    for tower in towers:
        params = by_tower[tower.prefix]
        local = [(n[len(tower.prefix):], n, p) for n, p in params]
        depth = max((int(m.group(1)) + 1 for ln, _, _ in local if (m := NUMBERED.search(ln))), default=0)
        for ln, n, p in local:
            nd = no_weight_decay(n, p)
            lid = layer_of(ln, depth)
            scale = tower.lr_mult * (optim.layer_decay ** (depth + 1 - lid) if optim.layer_decay < 1.0 else 1.0)
            key = (tower.prefix, lid if optim.layer_decay < 1.0 else 0, nd)
            g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if nd else optim.weight_decay,
                                        "lr": peak_lr * scale, "lr_scale": scale})
            g["params"].append(p)
    return list(groups.values())
