"""Synthetic captioned clips for the stage-2 learning check, sharded by the data engine.

- motion set: one coloured shape on a dark ground moving left, right, up or down; its caption names them,
  "a red square moves left" (3 colours x 2 shapes x 4 directions: 24 captions). The colour and the shape are in
  any frame; the direction only in the change between frames (the shape starts anywhere along its path).
- sound set: a red or blue square moving left or right over a tone of low, mid or high pitch (200, 800,
  3200 Hz): "a blue square moves right with a high tone" (12 captions). The pitch is in the audio alone, so
  only a model that hears it can tell three captions of the same picture apart.
Clips are H.264 mp4 (PyAV; the tone muxed in as AAC), ingested, cut and sharded by ivdata.pipeline; each clip's
caption goes into the manifest as the caption kind the recipe reads (V for motion, AVS for sound), as the
annotation stage would put it.
"""
from __future__ import annotations

import csv
from datetime import datetime
from itertools import product
from pathlib import Path

import numpy as np

from train_synthetic import DIRECTIONS, write_mp4

COLORS = {"red": (230, 40, 40), "green": (40, 210, 60), "blue": (60, 90, 240)}
SHAPES = ("square", "disc")
PITCHES = {"low": 200.0, "mid": 800.0, "high": 3200.0}
FPS, FRAMES, SIZE = 8, 20, 64


def shape_frames(color: str, shape: str, direction: str, rng: np.random.Generator, speed: float = 2.0) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) uint8: one shape of radius 7-9 px crossing the frame in `direction`."""
    dy, dx = DIRECTIONS[direction]
    r = int(rng.integers(7, 10))
    travel = speed * (FRAMES - 1)
    along = rng.uniform(r, SIZE - r)               # where it starts, along and across its path
    start = [rng.uniform(r, SIZE - r), rng.uniform(r, SIZE - r)]
    axis = 0 if dy else 1
    step = dy or dx
    start[axis] = along - step * travel * rng.uniform(0.2, 0.8)
    out = np.full((FRAMES, SIZE, SIZE, 3), int(rng.integers(0, 30)), dtype=np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for t in range(FRAMES):
        cy, cx = start[0] + dy * speed * t, start[1] + dx * speed * t
        inside = ((np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)) if shape == "square" else \
            ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        out[t][inside] = COLORS[color]
    return out


def tone(pitch: str, seconds: float, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * PITCHES[pitch] * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)


def motion_captions() -> list[tuple[str, dict]]:
    return [(f"a {c} {s} moves {d}", dict(color=c, shape=s, direction=d))
            for c, s, d in product(COLORS, SHAPES, DIRECTIONS)]


def sound_captions() -> list[tuple[str, dict]]:
    return [(f"a {c} square moves {d} with a {p} tone", dict(color=c, shape="square", direction=d, pitch=p))
            for c, d, p in product(("red", "blue"), ("left", "right"), PITCHES)]


def write_clips(out_dir: Path, captions: list[tuple[str, dict]], per_caption: int, seed: int) -> tuple[Path, dict]:
    """The clips as mp4 files and a CSV list for ingest; returns (CSV, {source_id: caption})."""
    from ivdata.media.synth import mux_audio

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, caption_of = [], {}
    for i in range(per_caption):
        for j, (text, parts) in enumerate(captions):
            stem = f"{out_dir.name}_{j:03d}_{i:03d}"
            path = out_dir / f"{stem}.mp4"
            frames = shape_frames(parts["color"], parts["shape"], parts["direction"], rng)
            if "pitch" in parts:
                silent = out_dir / f"{stem}.video.mp4"
                write_mp4(silent, frames, fps=FPS)
                mux_audio(str(silent), tone(parts["pitch"], FRAMES / FPS, rng), str(path))
                silent.unlink()
            else:
                write_mp4(path, frames, fps=FPS)
            rows.append({"path": str(path.resolve()), "source": "synthetic_stage2", "source_id": stem,
                         "label": text, "split": "train"})
            caption_of[stem] = text
    csv_path = out_dir / "clips.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "source", "source_id", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, caption_of


def build_set(work: Path, name: str, captions: list[tuple[str, dict]], per_caption: int, seed: int,
              kind: str) -> Path:
    """ingest -> probe -> split -> cut -> captions -> shard by the data engine; returns the wids index."""
    from ivdata.manifest import Manifest
    from ivdata.pipeline import build_corpus, shard
    from ivdata.stages.shard import ShardConfig

    csv_path, caption_of = write_clips(work / "videos" / name, captions, per_caption, seed)
    corpus = build_corpus(name, [csv_path], home=work / "home", cut="reencode", short_side=64, shard_maxcount=32)
    with Manifest(corpus.manifest_path) as m:
        clips = m.rows("SELECT c.clip_id, v.source_id FROM clips c JOIN videos v USING (video_id) "
                       "WHERE c.status = 'ok' ORDER BY c.clip_id")
        m.insert_rows("captions", [{"clip_id": r["clip_id"], "kind": kind, "text": caption_of[r["source_id"]],
                                    "lang": "en", "model": "synthetic", "prompt_hash": "-",
                                    "created_at": datetime(2026, 1, 1)} for r in clips])
    shard(corpus, ShardConfig(subset="all", shardset="captioned", maxcount=32))
    return Path(corpus.wids_index("captioned"))
