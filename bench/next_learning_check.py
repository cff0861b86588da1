"""Learning check for InternVideo-Next stage 1: does it teach the encoder motion, and does its diffusion decoder
reconstruct what the encoder did not see?

Set-up (all on CPU, all real files), shared with the stage-1 check (bench/train_learning_check.py):
1. The synthetic motion clips (bench/train_synthetic.py: shapes moving left/right/up/down, the class in no single
   frame), written as H.264 mp4 and sharded by the corpus core into a distillation set (unlabeled use), a probe
   train set and a probe eval set.
2. The teacher is the tiny SigLIP tower at random initialization (no real image teacher can be had here), so the
   alignment targets carry no motion; the predictor's layers come from the tiny random ModernBERT.
3. The tiny student (recipes/next_stage1_tiny.yaml, DeepSpeed, one CPU process) is trained twice on the
   distillation set, never seeing a label: with every loss (alignment + diffusion decoder), and with the
   alignment alone (`loss.diffusion_weight=0`, the ablation).
4. The attentive probe (ivtrain.eval.probe) is fit on the train set and scored on the eval set for both trained
   encoders and for the same architecture at random initialization, over several probe seeds.
5. `iv eval recon`'s path (ivtrain.eval.recon) samples the hidden patches of the eval clips by DDPM from the
   trained decoder, from the untrained one, and fills them with each clip's mean visible colour.

Usage: python bench/next_learning_check.py [WORK_DIR] [--data-seed N] [--steps N]
(tests/test_train_learning.py runs it, slow)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_learning_check import axis_accuracy, make_shards  # noqa: E402

RECIPE = ROOT / "recipes/next_stage1_tiny.yaml"
# What the check changes in the tiny recipe: a higher, slowly decaying learning rate (as the stage-1 check), so that
# a CPU run of a few thousand steps gets past the plateau a tubelet-1 ViT sits on before it relates frames.
STUDENT_OVERRIDES = ["optim.lr=2e-3", "optim.min_lr=2e-4", "optim.warmup_steps=100"]
RUNS = {"align+diffusion": [], "align only": ["next_stage1.loss.diffusion_weight=0"]}


def train_student(work: Path, name: str, extra: list[str], shards: Path, assets: Path, steps: int, batch: int,
                  recipe: Path = RECIPE, overrides: list[str] = STUDENT_OVERRIDES) -> dict:
    run_dir = work / name.replace(" ", "_").replace("+", "_")
    sets = [f"assets={assets}", f"data.shards={shards}", f"train.out_dir={run_dir}", f"train.steps={steps}",
            "train.ckpt_every=0", "train.log_every=250", f"data.batch_size={batch}", "train.tensorboard=false",
            "train.resume=false", *overrides, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "ivtrain.train", str(recipe)] + [a for s in sets for a in ("--set", s)],
                   check=True, env=env, cwd=ROOT)
    metrics = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return {"dir": run_dir, "sets": sets, "seconds": time.time() - t0,
            "first": {k: v for k, v in metrics[0].items() if k.startswith("loss")},
            "last": {k: v for k, v in metrics[-1].items() if k.startswith("loss")}}


def learning_check(work: Path, train_per_class: int = 64, eval_per_class: int = 32, distill_per_class: int = 512,
                   student_steps: int = 3000, student_batch: int = 16, probe_seeds: int = 3, probe_epochs: int = 60,
                   recon_clips: int = 32, data_seed: int = 0) -> dict:
    import torch

    from ivtrain.config import load_recipe
    from ivtrain.eval.probe import run_probe
    from ivtrain.eval.recon import run_recon
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

    runs = {name: train_student(work, name, extra, distill_shards, assets, student_steps, student_batch)
            for name, extra in RUNS.items()}
    seconds.update({f"student {name}": r["seconds"] for name, r in runs.items()})

    t0 = time.time()
    probes: dict[str, list] = {name: [] for name in [*runs, "random init"]}
    recipe = load_recipe(RECIPE, runs["align+diffusion"]["sets"])
    for seed in range(probe_seeds):
        for name, r in runs.items():
            probes[name].append(run_probe(str(train_shards), str(eval_shards), run_dir=r["dir"],
                                          epochs=probe_epochs, seed=seed))
        probes["random init"].append(run_probe(str(train_shards), str(eval_shards), recipe=recipe, random_init=True,
                                               epochs=probe_epochs, seed=seed))
    seconds["probes"] = time.time() - t0

    t0 = time.time()
    trained_dir = runs["align+diffusion"]["dir"]
    recon = {"trained": run_recon(trained_dir, str(eval_shards), work / "recon_trained.png", clips=recon_clips),
             "untrained": run_recon(trained_dir, str(eval_shards), work / "recon_untrained.png", clips=recon_clips,
                                    random_init=True)}
    seconds["recon"] = time.time() - t0

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    accuracy = {name: [p.eval_accuracy for p in ps] for name, ps in probes.items()}
    return {
        "clips": {"distill": 4 * distill_per_class, "train": 4 * train_per_class, "eval": 4 * eval_per_class},
        "student": {"steps": student_steps, "batch": student_batch, "overrides": STUDENT_OVERRIDES,
                    **{name: {"first": r["first"], "last": r["last"]} for name, r in runs.items()}},
        "probe_eval_accuracy": accuracy, "mean": {name: mean(a) for name, a in accuracy.items()},
        "margin": {name: mean(accuracy[name]) - mean(accuracy["random init"]) for name in runs},
        "axis_accuracy": {name: mean([axis_accuracy(p) for p in ps]) for name, ps in probes.items()},
        "class_order": probes["random init"][0].classes,
        "eval_confusion": {name: [p.eval_confusion for p in ps] for name, ps in probes.items()},
        "recon": {"mse_ddpm_trained": recon["trained"]["mse_ddpm"],
                  "mse_ddpm_untrained": recon["untrained"]["mse_ddpm"],
                  "mse_mean_fill": recon["trained"]["mse_mean_fill"], "clips": recon["trained"]["clips"],
                  "steps": recon["trained"]["steps"]},
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", nargs="?", default="bench/out/next_learning_check")
    parser.add_argument("--data-seed", type=int, default=0, help="0: the recorded set-up; others draw other clips")
    parser.add_argument("--steps", type=int, default=3000, help="student steps (batch 16) per run")
    args = parser.parse_args()
    result = learning_check(Path(args.work_dir), student_steps=args.steps, data_seed=args.data_seed)
    print(json.dumps(result, indent=2))
    (Path(args.work_dir) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
