"""The objectives, by the name recipes give in `objective:`. Each is one file, read top to bottom against its
paper, implementing the contract of ivtrain.objectives.base.

An objective defined outside ivtrain (a research prototype, a test) is named by the recipe's `objective_module`:
that module is imported first and registers its class with `register`."""
from __future__ import annotations

import importlib

from ivkit.typed_yaml import ConfigError

OBJECTIVES: dict[str, object] = {"iv2_stage1": "ivtrain.objectives.iv2_stage1:IV2Stage1",
                                  "iv2_stage2": "ivtrain.objectives.iv2_stage2:IV2Stage2",
                                  "iv2_stage3": "ivtrain.objectives.iv2_stage3:IV2Stage3",
                                  "next_stage1": "ivtrain.objectives.next_stage1:NextStage1",
                                  "next_stage2": "ivtrain.objectives.next_stage2:NextStage2"}


def register(cls):
    """Class decorator: make an objective known by its `name`."""
    OBJECTIVES[cls.name] = cls
    return cls


def objective_class(name: str, module: str = ""):
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"objective_module {module!r} does not import: {e}") from None
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    target = OBJECTIVES[name]
    if isinstance(target, str):
        module_name, cls = target.split(":")
        target = OBJECTIVES[name] = getattr(importlib.import_module(module_name), cls)
    return target


def build_objective(recipe, device, dist=None):
    return objective_class(recipe.objective, recipe.objective_module)(recipe, device, dist)


def write_tiny_assets(out) -> dict[str, str]:
    """Every tiny model directory the tiny recipes of every objective read (`iv models tiny DIR`); name -> path."""
    written: dict[str, str] = {}
    for name in list(OBJECTIVES):
        written.update(objective_class(name).write_tiny_assets(out))
    return written
