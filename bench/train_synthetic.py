"""Synthetic labeled videos whose class needs motion, and a plain shard writer for them.

Each clip shows a few coloured discs and squares on a dark background, all moving together in one of
four directions: left, right, up, down. Along the direction of motion the objects start anywhere on a
line long enough that, at every frame, the visible positions are uniformly spread over the frame, and
across it they are spread the same way, over the border too: no single frame, not even together with
its timestamp, tells the class or its axis (objects enter and leave through the border, and a shape
cut by the left border is as likely in every class). Only the change between frames does
(tests/test_train_synthetic.py). Files are real H.264 mp4s written with PyAV.
This module does not import ivtrain or ivdata.
"""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def motion_frames(direction: str, rng: np.random.Generator, size: int = 64, frames: int = 20,
                  speed: float = 1.5, objects: int = 4) -> np.ndarray:
    """(frames, size, size, 3) uint8: `objects` shapes moving `speed` px per frame in `direction`."""
    dy, dx = DIRECTIONS[direction]
    travel = speed * (frames - 1)
    out = np.full((frames, size, size, 3), rng.integers(0, 40), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(objects):
        r = int(rng.integers(size // 12, size // 8 + 1))
        start = []
        for step in (dy, dx):
            if step == 0:  # across the motion: as along it, cut by the border as often (else a cut edge
                # in a single frame would tell the axis of motion)
                start.append(rng.uniform(-r, size + r))
            else:  # along it: the object is (at least partly) in view at some frame, and at each frame its
                # position is uniform over [-r, size + r] whatever the direction
                lo = -r - travel if step > 0 else -r
                start.append(rng.uniform(lo, lo + size + 2 * r + travel))
        color = rng.integers(120, 256, size=3)
        square = rng.random() < 0.5
        for t in range(frames):
            cy, cx = start[0] + dy * speed * t, start[1] + dx * speed * t
            if square:
                inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            else:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            out[t][inside] = color
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # one encoder thread: libx264 with threads wrote different bytes for the same frames from run to run
        # (14 of 256 of these clips); with one, 3-4 of 256 still differ (PyAV 18's libx264; gone with
        # no-asm or without mb-tree, but those change speed or size). The learning check's margin does not
        # hang on it any more (bench/RESULTS.md).
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_motion_dataset(out_dir: str | Path, per_class: int, split: str = "train", seed: int = 0,
                         size: int = 64, frames: int = 20, speed: float = 1.5) -> Path:
    """Write per_class clips per direction into out_dir and a CSV `path,source,source_id,label,split`;
    returns the CSV."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(per_class):
        for label in DIRECTIONS:
            path = out_dir / f"{split}_{label}_{i:04d}.mp4"
            write_mp4(path, motion_frames(label, rng, size, frames, speed))
            # source_id: the corpus core derives video ids from it (else from the path), so the same
            # clips get the same ids, hence the same shard order, wherever out_dir is
            rows.append({"path": str(path.resolve()), "source": "synthetic_motion", "source_id": path.stem,
                         "label": label, "split": split})
    csv_path = out_dir / f"{split}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "source", "source_id", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def write_shards(videos: list[Path], out_dir: str | Path, name: str, labels: list | None = None,
                 per_shard: int = 16, corrupt: set[int] = frozenset()) -> Path:
    """Write videos as ivkit-format shards (K.mp4 + K.json) with a .wids.json and .txt; returns the index.

    `corrupt` lists positions whose mp4 bytes are replaced by garbage (to test skipping).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shardlist, paths = [], []
    for s in range(0, len(videos), per_shard):
        tar_path = out_dir / f"{name}-{s // per_shard:06d}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for i in range(s, min(s + per_shard, len(videos))):
                key = f"clip{i:05d}"
                data = Path(videos[i]).read_bytes() if i not in corrupt else b"\x00not a video" * 100
                meta = {"clip_id": key, "video_id": key, "source": "synthetic", "source_id": Path(videos[i]).stem,
                        "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0, "fps": 8.0, "num_frames": 16,
                        "width": 64, "height": 64, "has_audio": False, "captions": {}, "scores": {}}
                if labels is not None:
                    meta["label"] = labels[i]
                for ext, payload in (("mp4", data), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shardlist.append({"url": tar_path.name, "nsamples": min(per_shard, len(videos) - s),
                          "filesize": tar_path.stat().st_size})
        paths.append(tar_path.name)
    index = out_dir / f"{name}.wids.json"
    index.write_text(json.dumps({"wids_version": 1, "name": name, "shardlist": shardlist}))
    (out_dir / f"{name}.txt").write_text("\n".join(paths) + "\n")
    return index
