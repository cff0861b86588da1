"""How long rank 0 takes to convert a checkpoint for another world size, against copying its files.

A run resumed on another number of processes converts the ZeRO-partitioned checkpoint once with
DeepSpeed's ds_to_universal (ivtrain.engine.convert_to_universal) while the other ranks wait at a
barrier. This measures that conversion for a student of a given size (default ViT-B, 96 M parameters):
two processes (torchrun, gloo, CPU) take one AdamW step under ZeRO 1 or 2 and save a checkpoint; then
this process times
  - the conversion, as the trainer runs it (a subprocess, written to a temporary folder and renamed);
  - a plain copy of the same checkpoint folder (shutil.copytree), the I/O floor of any conversion.
ratio = conversion s / copy s. Seconds per GB of checkpoint are what one extrapolates to larger models
(the conversion reads every parameter's fp32 weights and two Adam moments and writes them again).

Usage: python bench/universal_conversion.py [--size b] [--zero 1] [--repeats 2] [--out F]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_checkpoint(size: str, zero: int, ckpt_dir: Path) -> None:
    """Run under torchrun: one AdamW step of the student on random clips, then a DeepSpeed checkpoint."""
    import deepspeed
    import torch

    from ivtrain.models.vit import ViTConfig
    from ivtrain.engine import setup_distributed
    from ivtrain.models.vit import InternVideo2

    setup_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    model = InternVideo2(ViTConfig(size=size, num_frames=8, img_size=112))  # a short clip: the weights are full size
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "train_batch_size": int(os.environ["WORLD_SIZE"]), "zero_optimization": {"stage": zero},
              "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                                           config=config)
    out = engine(torch.randn(1, 3, 8, 112, 112))
    engine.backward(out.pooled.square().mean())
    engine.step()
    engine.save_checkpoint(str(ckpt_dir), tag="step00000001")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="b", help="student size: tiny, b, l, ...")
    parser.add_argument("--zero", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="", help="also write the results JSON here")
    parser.add_argument("--write-checkpoint", default="", help=argparse.SUPPRESS)   # the torchrun children
    args = parser.parse_args()
    if args.write_checkpoint:
        write_checkpoint(args.size, args.zero, Path(args.write_checkpoint))
        return

    from ivtrain.engine import convert_to_universal

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = work / "checkpoints"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29541", str(Path(__file__).resolve()), "--size", args.size, "--zero", str(args.zero),
                        "--write-checkpoint", str(ckpt)], check=True, env=env, capture_output=True)
        tag = ckpt / "step00000001"
        size_bytes = folder_bytes(tag)
        convert_s, copy_s = [], []
        for i in range(args.repeats):  # alternated, so that the host's drift falls on both
            t0 = time.perf_counter()
            shutil.copytree(tag, work / f"copy{i}")
            copy_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            convert_to_universal(tag, work / f"universal{i}")
            convert_s.append(time.perf_counter() - t0)
        universal_bytes = folder_bytes(work / "universal0")
    conv, copy = min(convert_s), min(copy_s)
    result = {"size": args.size, "zero": args.zero, "world": 2, "checkpoint_gb": size_bytes / 1e9,
              "universal_gb": universal_bytes / 1e9, "convert_s": convert_s, "copy_s": copy_s,
              "ratio_convert_to_copy": conv / copy, "convert_s_per_gb": conv / (size_bytes / 1e9)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
