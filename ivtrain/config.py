"""Training recipes: the dataclass tree of a stage's YAML (recipes/iv2_stage1_*.yaml).

`load_recipe(path, overrides)` reads the YAML, applies `a.b.c=value` overrides (values parsed as
YAML), and builds the tree through ivkit.typed_yaml, which fails with the dotted path of any unknown
or ill-typed key; `validate` then checks the rules that tie keys together.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ivkit.typed_yaml import ConfigError, apply_override, build, read_mapping

__all__ = ["ConfigError", "Recipe", "load_recipe", "to_dict", "validate"]


@dataclass
class DataConfig:
    shards: str = ""                 # a .wids.json index, a .txt shard list, a directory of .tar, or a .tar
    num_frames: int = 8              # frames the student sees
    teacher_frames: int = 16         # frames sampled per clip; the student takes every (teacher_frames // num_frames)-th
    image_size: int = 224
    scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    max_distort: int = 1             # MultiScaleCrop: how far apart the width and height scale may be
    flip: bool = True
    no_flip_sources: list[str] = field(default_factory=lambda: ["ssv2"])  # never flipped: their labels name
                                     # directions (SSv2's "moving something from left to right"), as released
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    batch_size: int = 2              # per process, per micro step
    num_workers: int = 2
    shuffle: bool = True
    train: bool = True               # random sampling offsets + augmentation; False: centre frames, centre crop
    label_key: str = "label"         # json field returned as the label when present
    index_cache: str = ""            # per-shard member offsets: "" -> $XDG_CACHE_HOME/ivkit/shard_index, "off", or a dir


@dataclass
class ViTConfig:
    size: str = "tiny"               # tiny | b | l | 1b | 6b ; fields below that are set override the preset
    img_size: int = 0
    patch_size: int = 0
    num_frames: int = 0
    tubelet_size: int = 1
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    mlp_dim: int = 0
    pool_heads: int = 0              # attention-pooling heads (16 in every released size, whatever num_heads is)
    mlp_act: Literal["", "gelu", "gelu_tanh"] = ""   # "": the preset's (released sizes: gelu_tanh, as trained)
    train_pos_embed: bool = True     # position tables are trained (sin-cos start, no weight decay), as released
    qk_norm: bool = True
    layerscale_init: float = 0.1
    drop_path: float = 0.0
    attn_backend: Literal["auto", "sdpa", "flash"] = "auto"
    checkpoint_activations: bool = False


@dataclass
class TeacherConfig:
    path: str = ""                   # local directory holding the model (config + weights)
    backend: Literal["transformers", "open_clip", "internvit"] = "transformers"
    layers: int = 0                  # how many last layers to tap; 0 -> loss.align_layers


@dataclass
class TeachersConfig:
    semantic: TeacherConfig = field(default_factory=TeacherConfig)
    motion: TeacherConfig = field(default_factory=TeacherConfig)
    dtype: Literal["auto", "bf16", "fp32"] = "auto"   # auto: bf16 on CUDA, fp32 on CPU


@dataclass
class MaskConfig:
    type: Literal["attention", "tube", "random"] = "attention"
    ratio: float = 0.8               # fraction of tokens hidden from the student


@dataclass
class LossConfig:
    align_layers: int = 6            # last-K student layers aligned to the last-K semantic teacher layers
    semantic_weight: float = 1.0     # last-K layer alignment to the semantic teacher
    pooled_weight: float = 1.0       # pooled student output vs semantic teacher pooled feature
    motion_weight: float = 1.0       # last-K layer alignment to the motion teacher


@dataclass
class OptimConfig:
    lr: float = 1.5e-4               # peak lr; per `lr_base_batch` samples when that is set
    min_lr: float = 1e-6             # the cosine's floor, scaled like lr
    lr_base_batch: int = 0           # > 0: lr and min_lr are given per this many samples and scaled by
                                     # global batch / lr_base_batch (the release: 256)
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 0            # linear warmup from 0 (as released: the first step's lr is 0)
    warmup_epochs: float = 0.0       # or the warmup in epochs of the training data (not both)
    layer_decay: float = 1.0         # < 1: layer-wise LR decay (deeper layers learn faster)
    clip_grad: float = 3.0


@dataclass
class TrainConfig:
    steps: int = 0                   # optimizer steps; or
    epochs: float = 0.0              # passes over the training data (steps = epochs x samples // global batch)
    grad_accum: int = 1
    zero_stage: int = 1
    bf16: bool = False
    seed: int = 0
    out_dir: str = "runs/iv2_stage1"
    ckpt_every: int = 0              # 0: only at exit
    keep_last: int = 2
    log_every: int = 1
    tensorboard: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resume: bool = True              # continue from the newest checkpoint in out_dir when there is one
    allow_data_change: bool = False  # resume although the seed, shuffle or shards differ from the checkpoint's
                                     # (the run then goes on at the same sample position of the new order)
    peak_tflops: float = 0.0         # per-device peak for MFU; 0: known CUDA devices only (no MFU on CPU)
    export: bool = True              # write student.safetensors (plain weights) at the end
    max_nonfinite_in_a_row: int = 50  # this many NaN/inf micro batches in a row stop the run (bad teacher, diverged)
    debug_kill_at_step: int = 0      # fault injection for resume tests: SIGKILL this process after that step


@dataclass
class Recipe:
    objective: str = "iv2_stage1"
    data: DataConfig = field(default_factory=DataConfig)
    model: ViTConfig = field(default_factory=ViTConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe (or start from the defaults when path is None) and apply overrides."""
    raw = read_mapping(path) if path is not None else {}
    for ov in overrides:
        apply_override(raw, ov)
    recipe = build(Recipe, raw)
    validate(recipe)
    return recipe


def validate(r: Recipe) -> None:
    d = r.data
    if d.num_frames <= 0 or d.teacher_frames % d.num_frames:
        raise ConfigError(f"data.teacher_frames ({d.teacher_frames}) must be a multiple of data.num_frames ({d.num_frames})")
    if d.batch_size <= 0:
        raise ConfigError("data.batch_size must be positive")
    if not 0.0 <= r.mask.ratio < 1.0:
        raise ConfigError(f"mask.ratio must be in [0, 1), got {r.mask.ratio}")
    if (r.train.steps > 0) == (r.train.epochs > 0):
        raise ConfigError(f"set one of train.steps and train.epochs to a positive number (steps {r.train.steps}, "
                          f"epochs {r.train.epochs})")
    if r.train.steps < 0 or r.train.epochs < 0:
        raise ConfigError("train.steps and train.epochs cannot be negative")
    if r.optim.warmup_steps and r.optim.warmup_epochs:
        raise ConfigError("set optim.warmup_steps or optim.warmup_epochs, not both")
    if r.optim.warmup_steps < 0 or r.optim.warmup_epochs < 0 or r.optim.lr_base_batch < 0:
        raise ConfigError("optim.warmup_steps, optim.warmup_epochs and optim.lr_base_batch cannot be negative")
    if r.train.log_every < 1:
        raise ConfigError(f"train.log_every must be >= 1, got {r.train.log_every}")
    if r.train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage must be 0-3, got {r.train.zero_stage}")
    if r.train.grad_accum < 1:
        raise ConfigError("train.grad_accum must be >= 1")
    if len(r.optim.betas) != 2:
        raise ConfigError("optim.betas must hold two numbers")


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
