"""What a run reports: console lines, metrics.jsonl and TensorBoard (rank 0), throughput, FLOP/s, MFU, memory."""
from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from ivtrain.devices import datasheet_peak_tflops


def peak_flops(peak_tflops_setting: float, device: torch.device) -> float | None:
    """Per-device peak FLOP/s for MFU: the recipe's train.peak_tflops, or the datasheet's on a known GPU."""
    if peak_tflops_setting > 0:
        return peak_tflops_setting * 1e12
    if device.type == "cuda":
        tflops = datasheet_peak_tflops(torch.cuda.get_device_name(device))
        return tflops * 1e12 if tflops else None
    return None


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB (process peak RSS)


class MetricsSink:
    """Rank-0 metrics: rich console lines, JSONL, TensorBoard.

    A resumed run replays the steps after its checkpoint. metrics.jsonl keeps every life's rows (a replayed step
    appears once per life, the resumed run's last), which is the record of what happened; TensorBoard is told to
    hide the first life's rows from `resumed_step + 1` on, so its curves show one value per step."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, unit: str, resumed_step: int = 0):
        self.enabled, self.unit = enabled, unit
        self.writer = None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None:
                    self.writer.add_scalar(k, v, step)
        parts = [f"[bold]step {step}[/bold]", f"loss {metrics['loss']:.4f}"]
        parts += [f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/")]
        parts += [f"lr {metrics['lr']:.2e}", f"{metrics[f'{self.unit}_per_s']:.1f} {self.unit}/s",
                  f"step {metrics['step_time_s'] * 1000:.0f} ms"]
        if metrics.get("mfu") is not None:
            parts.append(f"MFU {metrics['mfu'] * 100:.1f}%")
        self.console.print("  ".join(parts))

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
