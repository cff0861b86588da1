"""Objectives: each maps a batch to (loss, metrics) and owns its trainable module and frozen teachers.

Interface the engine relies on (and nothing else):
  objective.trainable            nn.Module whose forward(**inputs) returns (loss, metrics dict)
  objective.prepare(batch)       no-grad work (teachers, masks) -> inputs for trainable
  objective.flops_per_sample()   {"student": training FLOPs, "teachers": forward FLOPs} per clip
"""
from __future__ import annotations

import importlib

OBJECTIVES = {"iv2_stage1": ("ivtrain.objectives.iv2_stage1", "IV2Stage1")}


def build_objective(recipe, device):
    if recipe.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {recipe.objective!r} (known: {', '.join(OBJECTIVES)})")
    module, cls = OBJECTIVES[recipe.objective]
    return getattr(importlib.import_module(module), cls)(recipe, device)
