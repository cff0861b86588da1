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


# dense bf16 datasheet peak per device (TFLOP/s), for MFU. Device names contain these keys; the longest key
# that matches wins, so "NVIDIA H100 PCIe" is not read as an SXM H100.
PEAK_TFLOPS = {"H100": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H800": 989.0, "H200": 989.0,
               "H200 NVL": 835.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "4090": 165.0}


def datasheet_peak_tflops(device_name: str) -> float | None:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_TFLOPS[key]
    return None
