"""The device a trainer or evaluator runs on: `auto` takes this rank's GPU when CUDA is present."""
from __future__ import annotations

import os

import torch


def pick_device(setting: str, option: str = "train.device") -> torch.device:
    if setting not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{option} must be auto, cpu or cuda, not {setting!r}")
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{option}=cuda but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
