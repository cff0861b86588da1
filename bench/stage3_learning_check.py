"""Learning check for IV2 stage 3: does instruction tuning teach the model to answer from the video?

Set-up (all on CPU, all real files):
1. Instruction shards of synthetic motion clips (bench/train_synthetic.py: shapes moving left/right/up/down,
   entering and leaving through every border, so that no single frame tells the direction), real H.264 mp4s, each
   with a question about the direction ("Which way do the shapes move?", four phrasings) answered by the direction
   word (bench/instruction_sets.py). Training and held-out sets are different clips.
2. The model: a random tiny InternVideo2 tower (tubelet 2, 8 frames of 32 px) -> QFormer (tiny BERT, 8 + 8
   queries, the question as its text input) -> the tiny Llama-architecture LLM (random, frozen) with LoRA r 8, all
   written here (`iv models tiny`); trained with `python -m ivtrain.train recipes/iv2_stage3_tiny.yaml` (DeepSpeed
   ZeRO 1, one CPU process), the tower and QFormer trained, on the answers only.
3. Each held-out clip is asked its question through `iv chat`'s code (frames at the segment middles, centre crop,
   the chat template, greedy generation); an answer counts when it is exactly the direction. Then the same model
   answers with its video tokens replaced by zeros: what is left is what the text alone tells (chance: 1/4).

Usage: python bench/stage3_learning_check.py [WORK_DIR] [--steps N]   (tests/test_train_stage3_learning.py runs
the recorded set-up, slow)
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

from instruction_sets import motion_instruction_set  # noqa: E402
from train_synthetic import DIRECTIONS  # noqa: E402

# What the check changes in recipes/iv2_stage3_tiny.yaml, and why: 8 frames for a tubelet-2 tower (motion shows in
# each tubelet; a tubelet-1 tower learns direction far more slowly, bench/RESULTS.md, stage 1), batches of 16, a
# higher lr with warmup and no dropout (a few minutes of CPU, not 3 epochs of VideoChat2-IT).
OVERRIDES = ["data.num_frames=8", "data.batch_size=16", "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_steps=100",
             "iv2_stage3.qformer.dropout=0", "iv2_stage3.qformer.attn_dropout=0", "iv2_stage3.qformer.drop_path=0",
             "iv2_stage3.llm.lora.dropout=0", "train.ckpt_every=0", "train.log_every=50", "train.tensorboard=false",
             "train.resume=false"]


def ask(run: Path, shards: Path, zero_vision: bool) -> tuple[float, dict]:
    """Exact-match accuracy of greedy answers to the held-out clips' questions, and the confusion counts."""
    from ivtrain.data.index import ShardIndex
    from ivtrain.eval.chat import Generation, answer, load_chat_model, views_of

    chat = load_chat_model(run, "cpu")
    index = ShardIndex.open(str(shards), "off")
    hits, confusion = 0, {}
    for i in range(len(index)):
        turns = json.loads(index.read(i, "conversations.json"))
        label = index.metadata(i)["label"]
        question = turns[0]["value"].replace("<video>\n", "")
        chat.turns = []
        said = answer(chat, views_of(chat, index.read(i, "mp4"), False), False, question,
                      Generation(max_new_tokens=4), zero_vision=zero_vision)
        hits += said == label
        confusion[f"{label}->{said}"] = confusion.get(f"{label}->{said}", 0) + 1
    return hits / len(index), confusion


def learning_check(work: Path, steps: int = 1200, train_per_class: int = 128, eval_per_class: int = 32,
                   seed: int = 0) -> dict:
    import torch

    from ivtrain.objectives.iv2_stage3 import IV2Stage3
    from ivtrain.tiny_chat import save_tiny_vision_run

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train = motion_instruction_set(work / "train", "train", train_per_class, seed=1 + 10 * seed)
    held_out = motion_instruction_set(work / "eval", "eval", eval_per_class, seed=2 + 10 * seed)
    IV2Stage3.write_tiny_assets(work / "assets")
    vision = save_tiny_vision_run(work / "vision", seed=seed, tubelet_size=2, num_frames=8)
    t_data = time.time() - t0

    run = work / "run"
    sets = [f"assets={work / 'assets'}", f"data.shards={train}", f"iv2_stage3.vision.init={vision}",
            f"train.out_dir={run}", f"train.steps={steps}", f"train.seed={seed}", *OVERRIDES]
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "ivtrain.train", str(ROOT / "recipes/iv2_stage3_tiny.yaml")]
                   + [a for s in sets for a in ("--set", s)], check=True, env=env, cwd=ROOT)
    t_train = time.time() - t0
    metrics = [json.loads(line) for line in open(run / "metrics.jsonl")]

    t0 = time.time()
    with_video, confusion = ask(run, held_out, zero_vision=False)
    zeroed, zero_confusion = ask(run, held_out, zero_vision=True)
    t_eval = time.time() - t0
    return {"train_clips": 4 * train_per_class, "eval_clips": 4 * eval_per_class, "classes": sorted(DIRECTIONS),
            "steps": steps, "overrides": OVERRIDES, "first_loss": metrics[0]["loss"], "last_loss": metrics[-1]["loss"],
            "last_answer_token_accuracy": metrics[-1]["answer_token_accuracy"],
            "accuracy_with_video": with_video, "accuracy_video_zeroed": zeroed, "chance": 0.25,
            "margin": with_video - zeroed, "confusion_with_video": confusion, "confusion_video_zeroed": zero_confusion,
            "seconds": {"data": round(t_data), "train": round(t_train), "eval": round(t_eval)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", nargs="?", type=Path, default=ROOT / "bench/out/stage3_learning")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result = learning_check(args.work, steps=args.steps, seed=args.seed)
    print(json.dumps(result, indent=1))
    (args.work / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
