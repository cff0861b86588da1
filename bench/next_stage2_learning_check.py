"""Learning check for InternVideo-Next stage 2: does latent prediction against the frozen stage-1 encoder, on
multi-block masks, teach the encoder more motion than stage 1 left it with?

Set-up (all on CPU, all real files), as bench/next_learning_check.py:
1. The synthetic motion clips (bench/train_synthetic.py: shapes moving left/right/up/down, the class in no single
   frame) as H.264 mp4, sharded by the corpus core into a distillation set (unlabeled), a probe train and eval set.
2. Stage 1 (recipes/next_stage1_tiny.yaml with the stage-1 check's overrides; a random tiny SigLIP teacher and
   ModernBERT) trains on the distillation set.
3. Stage 2 (recipes/next_stage2_tiny.yaml) starts from that run and trains on the same clips, never a label, at
   the stage-1 frame count (4): the comparison is then between objectives, not between clip lengths.
4. The attentive probe (ivtrain.eval.probe) is fit on the train set and scored on the eval set for the stage-2
   encoder, its stage-1 initialization and the architecture at random initialization, over several probe seeds.

Usage: python bench/next_stage2_learning_check.py [WORK_DIR] [--stage1-steps N] [--stage2-steps N]
(no test runs it yet: at the scales run so far its stage-1 run had not learned motion; bench/RESULTS.md)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from next_learning_check import STUDENT_OVERRIDES, train_student  # noqa: E402
from train_learning_check import axis_accuracy, make_shards  # noqa: E402

STAGE2_RECIPE = ROOT / "recipes/next_stage2_tiny.yaml"
# stage 2 as the paper runs it after stage 1: a lower lr, no warmup; at the stage-1 frame count (see 3. above)
STAGE2_OVERRIDES = ["optim.lr=5e-4", "optim.min_lr=5e-5", "optim.warmup_steps=0", "data.num_frames=4",
                    "next_stage2.model.num_frames=4"]


def learning_check(work: Path, train_per_class: int = 64, eval_per_class: int = 32, distill_per_class: int = 256,
                   stage1_steps: int = 1500, stage2_steps: int = 1500, batch: int = 16, probe_seeds: int = 3,
                   probe_epochs: int = 60, data_seed: int = 0) -> dict:
    import torch

    from ivtrain.config import load_recipe
    from ivtrain.eval.probe import run_probe
    from ivtrain.objectives.next_stage1 import NextStage1

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_shards = make_shards(work, "motion_train", train_per_class, seed=1 + 10 * data_seed)
    eval_shards = make_shards(work, "motion_eval", eval_per_class, seed=2 + 10 * data_seed)
    distill_shards = make_shards(work, "motion_distill", distill_per_class, seed=7 + 10 * data_seed)
    assets = work / "assets"
    NextStage1.write_tiny_assets(assets)
    seconds = {"data": time.time() - t0}

    stage1 = train_student(work, "stage1", [], distill_shards, assets, stage1_steps, batch)
    stage2 = train_student(work, "stage2", [f"next_stage2.init={stage1['dir']}"], distill_shards, assets,
                           stage2_steps, batch, recipe=STAGE2_RECIPE, overrides=STAGE2_OVERRIDES)
    seconds.update({"stage1": stage1["seconds"], "stage2": stage2["seconds"]})

    t0 = time.time()
    runs = {"stage2": stage2["dir"], "stage1 (its init)": stage1["dir"]}
    probes: dict[str, list] = {name: [] for name in [*runs, "random init"]}
    recipe = load_recipe(ROOT / "recipes/next_stage1_tiny.yaml", stage1["sets"])
    for seed in range(probe_seeds):
        for name, run_dir in runs.items():
            probes[name].append(run_probe(str(train_shards), str(eval_shards), run_dir=run_dir, epochs=probe_epochs,
                                          seed=seed))
        probes["random init"].append(run_probe(str(train_shards), str(eval_shards), recipe=recipe, random_init=True,
                                               epochs=probe_epochs, seed=seed))
    seconds["probes"] = time.time() - t0

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    accuracy = {name: [p.eval_accuracy for p in ps] for name, ps in probes.items()}
    return {
        "clips": {"distill": 4 * distill_per_class, "train": 4 * train_per_class, "eval": 4 * eval_per_class},
        "stage1": {"steps": stage1_steps, "batch": batch, "overrides": STUDENT_OVERRIDES,
                   "first": stage1["first"], "last": stage1["last"]},
        "stage2": {"steps": stage2_steps, "batch": batch, "overrides": STAGE2_OVERRIDES,
                   "first": stage2["first"], "last": stage2["last"]},
        "probe_eval_accuracy": accuracy, "mean": {name: mean(a) for name, a in accuracy.items()},
        "margin_over_stage1": mean(accuracy["stage2"]) - mean(accuracy["stage1 (its init)"]),
        "margin_over_random": mean(accuracy["stage2"]) - mean(accuracy["random init"]),
        "axis_accuracy": {name: mean([axis_accuracy(p) for p in ps]) for name, ps in probes.items()},
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", nargs="?", default="bench/out/next_stage2_learning_check")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--stage1-steps", type=int, default=1500)
    parser.add_argument("--stage2-steps", type=int, default=1500)
    parser.add_argument("--probe-seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--distill-per-class", type=int, default=256)
    args = parser.parse_args()
    result = learning_check(Path(args.work_dir), stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                            probe_seeds=args.probe_seeds, data_seed=args.data_seed, batch=args.batch,
                            distill_per_class=args.distill_per_class)
    print(json.dumps(result, indent=2))
    (Path(args.work_dir) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
