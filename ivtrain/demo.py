"""The trainer's part of `make demo`: a short tiny stage-1 run on shards made by the corpus core.

`python -m ivtrain.demo SHARDS [--work runs/demo] [--steps 10]` writes tiny teachers (the VideoMAE
briefly trained as a masked-pixel model on SHARDS), then runs `python -m ivtrain.train` with
recipes/iv2_stage1_tiny.yaml on SHARDS in a subprocess (a world of one, DeepSpeed ZeRO 1, CPU).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ivtrain.models.teachers import save_tiny_clip_teacher
from ivtrain.tiny_teachers import train_tiny_videomae

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "iv2_stage1_tiny.yaml"


def run_demo(shards: str | Path, work: str | Path = "runs/demo", steps: int = 10, teacher_steps: int = 30) -> Path:
    work = Path(work)
    teachers = work / "teachers"
    save_tiny_clip_teacher(teachers / "tiny_clip")
    train_tiny_videomae(teachers / "tiny_videomae", str(shards), teacher_steps, batch_size=2)
    out = work / "iv2_stage1_tiny"
    sets = [f"data.shards={shards}", f"teachers.semantic.path={teachers / 'tiny_clip'}",
            f"teachers.motion.path={teachers / 'tiny_videomae'}", f"train.out_dir={out}", f"train.steps={steps}",
            "train.ckpt_every=0", "data.num_workers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "ivtrain.train", str(RECIPE)] + [a for s in sets for a in ("--set", s)],
                   check=True, env=env)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards", help=".wids.json / .txt / directory of shards (from the corpus core)")
    parser.add_argument("--work", default="runs/demo")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    out = run_demo(args.shards, args.work, args.steps)
    print(f"tiny stage-1 run finished: {out}/metrics.jsonl, {out}/student.safetensors")


if __name__ == "__main__":
    main()
