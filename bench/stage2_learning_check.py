"""Learning check for InternVideo2 stage 2: does the tiny stage-2 model learn to retrieve clips by captions that
name what moves and how, and, with audio, by captions that name the sound?

Set-up (CPU, real files, bench/stage2_synthetic.py):
1. motion: 24 captions "a {red|green|blue} {square|disc} moves {left|right|up|down}"; the train set has
   `per_caption` clips of each, the eval set one new clip of each (other positions, sizes, backgrounds).
   The tiny stage-2 recipe (recipes/iv2_stage2_tiny.yaml: tiny ViT, tiny BERT, VTC + VTM + MLM, 80 % of video
   tokens hidden) trains with `python -m ivtrain.train` from random towers (no flips: the captions name
   directions). Zero-shot text -> video R@1 on the eval set (ivtrain.eval.retrieval) of the trained model is
   compared with the same model at initialization (`init=True`: the recipe's starting weights) and with chance.
2. sound: 12 captions "a {red|blue} square moves {left|right} with a {low|mid|high} tone" (200/800/3200 Hz);
   trained with the tiny BEATs (frozen, random) and every loss, the audio-visual ones on the same caption
   (as the 6B recipe). Text -> clip R@1 of the audio-visual feature (av_fusion of audio and video) is compared
   with the video-only feature of the same run: three captions share each picture, so video alone can at best
   pick the right one of three.

Usage: python bench/stage2_learning_check.py [WORK_DIR] [--steps N]   (tests/test_train_stage2_learning.py runs it
with the recorded settings, slow). Appends its result to bench/RESULTS.md with --record.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import stage2_synthetic  # noqa: E402

SETTINGS = dict(motion_per_caption=6, sound_per_caption=8, steps=300, batch_size=8, lr=1e-3, seed=0)


def recipe(work: Path, name: str, shards: Path, steps: int, batch_size: int, lr: float, seed: int,
           audio: bool) -> Path:
    assets = work / "assets"
    section = {"vision": {"init": "", "model": {"size": "tiny", "image_pos_embed": True}},
               "text": {"path": str(assets / "tiny_bert"), "fusion_layer": 2, "max_length": 16},
               "embed_dim": 32, "captions": {"default": ["V"]}}
    if audio:
        section.update(audio={"path": str(assets / "tiny_beats"), "seconds": 2.5, "num_mel_bins": 64},
                       av_concat_dim=48, captions={"default": ["AVS"]},
                       loss={"avtc": 1.0, "avtm": 1.0, "avmlm": 1.0},
                       sources={"default": ["vtc", "vtm", "mlm", "avtc", "avtm", "avmlm"]})
    raw = {"objective": "iv2_stage2", "assets": str(assets),
           "data": {"shards": str(shards), "num_frames": 4, "image_size": 32, "batch_size": batch_size,
                    "num_workers": 2, "flip": False, "index_cache": "off"},
           "iv2_stage2": section,
           "optim": {"lr": lr, "min_lr": lr / 100, "warmup_steps": 20, "weight_decay": 0.05},
           "train": {"steps": steps, "seed": seed, "out_dir": str(work / "runs" / name), "ckpt_every": 0,
                     "log_every": 50, "tensorboard": False}}
    path = work / f"{name}.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def train(recipe_path: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "ivtrain.train", str(recipe_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return time.time() - t0


def retrieval(run: Path, shards: Path, **kw) -> dict:
    from ivtrain.eval.retrieval import run_retrieval

    return run_retrieval(run, str(shards), k_test=4, workers=1, device="cpu", **kw)


def main(work: Path, steps: int, motion_per_caption: int, sound_per_caption: int, batch_size: int, lr: float,
         seed: int) -> dict:
    from ivtrain.objectives import write_tiny_assets

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    write_tiny_assets(work / "assets")
    sets = {"motion_train": stage2_synthetic.build_set(work, "motion_train", stage2_synthetic.motion_captions(),
                                                        motion_per_caption, seed=1, kind="V"),
            "motion_eval": stage2_synthetic.build_set(work, "motion_eval", stage2_synthetic.motion_captions(), 1,
                                                       seed=2, kind="V"),
            "sound_train": stage2_synthetic.build_set(work, "sound_train", stage2_synthetic.sound_captions(),
                                                       sound_per_caption, seed=3, kind="AVS"),
            "sound_eval": stage2_synthetic.build_set(work, "sound_eval", stage2_synthetic.sound_captions(), 2,
                                                      seed=4, kind="AVS")}
    data_s = time.time() - t0
    runs = work / "runs"
    train_s = {"motion": train(recipe(work, "motion", sets["motion_train"], steps, batch_size, lr, seed, False)),
               "sound": train(recipe(work, "sound", sets["sound_train"], steps, batch_size, lr, seed, True))}
    motion = {"trained": retrieval(runs / "motion", sets["motion_eval"]),
              "init": retrieval(runs / "motion", sets["motion_eval"], init=True)}
    sound = {"audio_video": retrieval(runs / "sound", sets["sound_eval"], audio=True),
             "video": retrieval(runs / "sound", sets["sound_eval"])}
    t2v = lambda r: r["t2v"]["r1"]  # noqa: E731
    result = {"settings": dict(steps=steps, motion_per_caption=motion_per_caption,
                               sound_per_caption=sound_per_caption, batch_size=batch_size, lr=lr, seed=seed),
              "motion_t2v_r1": {"trained": t2v(motion["trained"]), "init": t2v(motion["init"]),
                                "chance": motion["trained"]["chance_r1"],
                                "trained_rerank": motion["trained"]["t2v_rerank"]["r1"]},
              "motion_v2t_r1": {"trained": motion["trained"]["v2t"]["r1"], "init": motion["init"]["v2t"]["r1"]},
              "sound_t2v_r1": {"audio_video": t2v(sound["audio_video"]), "video": t2v(sound["video"]),
                               "chance": sound["video"]["chance_r1"]},
              "detail": {"motion": motion, "sound": sound},
              "seconds": {"data": round(data_s, 1), "train": {k: round(v, 1) for k, v in train_s.items()},
                          "total": round(time.time() - t0, 1)}}
    (work / "result.json").write_text(json.dumps(result, indent=2))
    return result


def record(result: dict) -> None:
    m, s = result["motion_t2v_r1"], result["sound_t2v_r1"]
    cfg = result["settings"]
    lines = [
        "",
        f"## Stage-2 learning check ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"CPU, bench/stage2_learning_check.py)",
        f"Tiny stage 2 (recipes/iv2_stage2_tiny.yaml towers, random start), {cfg['steps']} steps of "
        f"{cfg['batch_size']} clips, lr {cfg['lr']}, seed {cfg['seed']}; eval sets of new clips.",
        "",
        "| check | trained | baseline | chance |",
        "|---|---|---|---|",
        f"| motion captions, text -> video R@1 (24 clips, 24 captions) | {m['trained']:.1f} | "
        f"{m['init']:.1f} (same model at init) | {m['chance']:.1f} |",
        f"| motion, after re-ranking the top 4 by the matching head | {m['trained_rerank']:.1f} | | |",
        f"| sound captions, text -> clip R@1, audio+video vs video only (24 clips, 12 captions) | "
        f"{s['audio_video']:.1f} | {s['video']:.1f} (video only, same run) | {s['chance']:.1f} |",
        "",
        f"Wall time {result['seconds']['total']:.0f} s (data {result['seconds']['data']:.0f} s, training "
        f"{result['seconds']['train']['motion']:.0f} + {result['seconds']['train']['sound']:.0f} s).",
    ]
    with open(ROOT / "bench" / "RESULTS.md", "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", nargs="?", default=str(ROOT / "bench" / "out" / "stage2_learning"))
    for key, value in SETTINGS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = vars(parser.parse_args())
    work, rec = Path(args.pop("work")), args.pop("record")
    res = main(work, **args)
    print(json.dumps({k: v for k, v in res.items() if k != "detail"}, indent=2))
    if rec:
        record(res)
