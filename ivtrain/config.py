"""Training recipes: the sections every objective shares, plus one section that belongs to the objective.

A recipe YAML names its objective and carries that objective's section under the same name:

    objective: iv2_stage1
    assets: runs/assets           # optional: "${assets}" in any string value is replaced by this
    data:  {...}                  # DataConfig: the shard sets and how samples are decoded and batched
    optim: {...}                  # OptimConfig
    train: {...}                  # TrainConfig
    iv2_stage1: {...}             # the objective's own dataclass, defined and validated in its file

`load_recipe(path, overrides)` reads the YAML, applies `a.b.c=value` overrides (values parsed as YAML), fills
`${assets}`, and builds the tree through ivkit.typed_yaml, which fails with the dotted path of any unknown,
missing or ill-typed key; then the common rules (`validate`) and the objective's own (`Objective.validate`)
run, all before any work starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivkit.typed_yaml import ConfigError, apply_override, build, read_mapping

__all__ = ["ConfigError", "DataConfig", "OptimConfig", "Recipe", "SourceConfig", "TrainConfig", "load_recipe",
           "build_recipe", "to_dict", "validate"]


@dataclass
class SourceConfig:
    """One shard set of a weighted mixture."""
    shards: str                      # a .wids.json index, a .txt shard list, a directory of .tar, or a .tar
    name: str = ""                   # how metrics and checkpoints name it (default: source0, source1, ...)
    weight: float = 1.0              # share of the batches drawn from it


@dataclass
class DataConfig:
    shards: str = ""                 # one shard set (shorthand for a single source); or
    sources: list[SourceConfig] = field(default_factory=list)   # several, each batch drawn from one by weight
    num_frames: int = 8              # frames sampled per clip (an objective may take a subset: stage 1's student)
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

    def source_list(self) -> list[SourceConfig]:
        """The mixture's sources, named (`shards` alone is one source named `default`)."""
        if self.sources:
            return [dataclasses.replace(s, name=s.name or f"source{i}") for i, s in enumerate(self.sources)]
        return [SourceConfig(shards=self.shards, name="default")]


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
    layer_decay: float = 1.0         # < 1: layer-wise LR decay in every tower with numbered layers
    clip_grad: float = 3.0


@dataclass
class TrainConfig:
    steps: int = 0                   # optimizer steps; or
    epochs: float = 0.0              # passes over the training data (steps = epochs x samples // global batch)
    grad_accum: int = 1
    zero_stage: int = 1
    bf16: bool = False
    seed: int = 0
    out_dir: str = "runs/train"
    ckpt_every: int = 0              # 0: only at exit
    keep_last: int = 2
    log_every: int = 1
    tensorboard: bool = True
    device: str = "auto"             # auto | cpu | cuda
    resume: bool = True              # continue from the newest checkpoint in out_dir when there is one
    allow_data_change: bool = False  # resume although the seed, shuffle or shards differ from the checkpoint's
                                     # (the run then goes on at the same sample position of the new order)
    peak_tflops: float = 0.0         # per-device peak for MFU; 0: known CUDA devices only (no MFU on CPU)
    export: bool = True              # write the objective's artifacts (safetensors) at the end
    max_nonfinite_in_a_row: int = 50  # this many NaN/inf micro batches in a row stop the run (bad teacher, diverged)
    debug_kill_at_step: int = 0      # fault injection for resume tests: SIGKILL this process after that step


@dataclass
class Recipe:
    objective: str
    section: Any                     # the objective's dataclass, written under the key named by `objective`
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    assets: str = ""
    objective_module: str = ""       # a module to import first that registers the objective (one outside ivtrain)


COMMON = ("objective", "objective_module", "assets", "data", "optim", "train")
# keys of the recipe layout before objectives had sections of their own: where each went
MOVED = {"model": "{o}.model", "teachers": "{o}.teachers", "mask": "{o}.mask", "loss": "{o}.loss",
         "data.teacher_frames": "data.num_frames (the frames the loader samples: the teachers' 16) with "
                                "{o}.student_frames (the student's 8)"}


def _moved_keys(raw: dict, objective: str) -> None:
    for old, new in MOVED.items():
        head, _, tail = old.partition(".")
        present = tail in (raw.get(head) or {}) if tail else head in raw
        if present:
            raise ConfigError(f"recipe key {old} has moved to {new.format(o=objective)} (recipes now keep an "
                              f"objective's own keys in a section named after it: README, Training)")


def _fill_assets(node: Any, assets: str, where: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _fill_assets(v, assets, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill_assets(v, assets, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${assets}" in node:
        if not assets:
            raise ConfigError(f"{where} uses ${{assets}}: set assets=DIR (`iv models tiny DIR` writes the tiny models "
                              "the tiny recipes use)")
        return node.replace("${assets}", assets.rstrip("/"))
    return node


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                objective: str | None = None) -> Recipe:
    """Read a YAML recipe (or start from the defaults of `objective` when path is None), apply overrides."""
    raw = read_mapping(path) if path is not None else ({"objective": objective} if objective else {})
    for ov in overrides:
        apply_override(raw, ov)
    return build_recipe(raw)


def build_recipe(raw: dict) -> Recipe:
    """A recipe from its plain mapping (a YAML file's, or a run's recipe.json), checked as load_recipe does."""
    from ivtrain.objectives import objective_class

    name = raw.get("objective")
    if not isinstance(name, str) or not name:
        raise ConfigError("the recipe names no objective (objective: iv2_stage1, ...)")
    cls = objective_class(name, str(raw.get("objective_module") or ""))
    _moved_keys(raw, name)
    raw = _fill_assets(raw, str(raw.get("assets") or ""))
    extra = sorted(set(raw) - set(COMMON) - {name})
    if extra:
        raise ConfigError(f"unknown key {extra[0]}: a recipe holds {', '.join(COMMON)} and the section of its "
                          f"objective ({name})" + (" - a section for another objective does not belong in it"
                                                  if _is_objective(extra[0]) else ""))
    common = build(_Common, {k: raw[k] for k in COMMON if k in raw})
    section = build(cls.Config, raw.get(name) or {}, name)
    recipe = Recipe(objective=name, section=section, data=common.data, optim=common.optim, train=common.train,
                    assets=common.assets, objective_module=common.objective_module)
    validate(recipe)
    cls.validate(recipe)
    return recipe


@dataclass
class _Common:
    objective: str
    objective_module: str = ""
    assets: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _is_objective(name: str) -> bool:
    from ivtrain.objectives import OBJECTIVES
    return name in OBJECTIVES


def validate(r: Recipe) -> None:
    """The rules of the common sections."""
    d = r.data
    if bool(d.shards) == bool(d.sources):
        raise ConfigError("set data.shards (one shard set) or data.sources (a weighted mixture), not both or neither")
    names = [s.name for s in d.source_list()]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources: names must differ, got {names}")
    if any(s.weight <= 0 for s in d.source_list()):
        raise ConfigError("data.sources: every weight must be positive")
    if d.num_frames <= 0 or d.image_size <= 0:
        raise ConfigError("data.num_frames and data.image_size must be positive")
    if d.batch_size <= 0:
        raise ConfigError("data.batch_size must be positive")
    if d.num_workers < 0:
        raise ConfigError("data.num_workers cannot be negative")
    t, o = r.train, r.optim
    if (t.steps > 0) == (t.epochs > 0):
        raise ConfigError(f"set one of train.steps and train.epochs to a positive number (steps {t.steps}, "
                          f"epochs {t.epochs})")
    if t.steps < 0 or t.epochs < 0:
        raise ConfigError("train.steps and train.epochs cannot be negative")
    if o.warmup_steps and o.warmup_epochs:
        raise ConfigError("set optim.warmup_steps or optim.warmup_epochs, not both")
    if o.warmup_steps < 0 or o.warmup_epochs < 0 or o.lr_base_batch < 0:
        raise ConfigError("optim.warmup_steps, optim.warmup_epochs and optim.lr_base_batch cannot be negative")
    if t.log_every < 1:
        raise ConfigError(f"train.log_every must be >= 1, got {t.log_every}")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage must be 0-3, got {t.zero_stage}")
    if t.grad_accum < 1:
        raise ConfigError("train.grad_accum must be >= 1")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {t.device!r}")
    if len(o.betas) != 2:
        raise ConfigError("optim.betas must hold two numbers")


def to_dict(recipe: Recipe) -> dict:
    """The recipe as the YAML that would rebuild it (the objective's section under its name)."""
    out = {"objective": recipe.objective, "objective_module": recipe.objective_module, "assets": recipe.assets,
           "data": dataclasses.asdict(recipe.data),
           "optim": dataclasses.asdict(recipe.optim), "train": dataclasses.asdict(recipe.train)}
    out[recipe.objective] = dataclasses.asdict(recipe.section)
    return out
