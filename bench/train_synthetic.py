"""Synthetic labeled videos whose class needs motion, and a plain shard writer for them.

Each clip is a camera pan over a random scene (a dark canvas with coloured rectangles and discs, or a
smooth colour texture) in one of four directions: left, right, up, down. Every single frame is a window
onto a random scene, so no frame on its own reveals the class; only the motion does.
Files are real H.264 mp4s written with PyAV. This module does not import ivtrain or ivdata.
"""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def render_canvas(rng: np.random.Generator, size: int, shapes: int = 2) -> np.ndarray:
    """A dark canvas with a few large coloured rectangles or discs at random places."""
    canvas = np.full((size, size, 3), rng.integers(0, 40), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(shapes):
        color = rng.integers(120, 256, size=3)
        cy, cx = rng.integers(0, size, size=2)
        r = rng.integers(size // 10, size // 6)
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        else:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        canvas[inside] = color
    return canvas


def render_texture(rng: np.random.Generator, size: int, waves: int = 6, max_freq: int = 3) -> np.ndarray:
    """A smooth random colour texture that tiles (a sum of a few low-frequency plane waves), so every
    patch carries edges that a shift moves and wrap-around scrolling leaves no seam."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size, 3))
    for _ in range(waves):
        ky, kx = rng.integers(-max_freq, max_freq + 1, size=2)
        if ky == 0 and kx == 0:
            kx = 1
        wave = np.cos(2 * np.pi * (ky * yy + kx * xx) + rng.uniform(0, 2 * np.pi))
        out += wave[..., None] * rng.uniform(-1, 1, size=3)
    out = (out - out.min()) / max(out.max() - out.min(), 1e-6)
    return (out * 255).astype(np.uint8)


def motion_frames(direction: str, rng: np.random.Generator, size: int = 64, frames: int = 16,
                  speed: int = 3, canvas: str = "shapes") -> np.ndarray:
    """A camera pan: a size x size window slides over a larger random canvas, `speed` px per frame."""
    dy, dx = DIRECTIONS[direction]
    travel = speed * (frames - 1)
    big = size + travel
    if canvas == "shapes":
        scene = render_canvas(rng, big, shapes=max(2, round(2 * (big / size) ** 2)))
    elif canvas == "dot":
        scene = np.zeros((big, big, 3), np.uint8)
        cy, cx = rng.integers(size // 4, big - size // 4, size=2)
        scene[max(0, cy - 5):cy + 5, max(0, cx - 5):cx + 5] = 255
    else:
        scene = render_texture(rng, big)
    # start where the window can travel the whole way without leaving the canvas
    y0 = travel if dy < 0 else 0
    x0 = travel if dx < 0 else 0
    other = rng.integers(0, travel + 1)
    y0, x0 = (y0, other) if dy else (other, x0)
    return np.stack([scene[y0 + dy * speed * t: y0 + dy * speed * t + size,
                           x0 + dx * speed * t: x0 + dx * speed * t + size] for t in range(frames)])


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_motion_dataset(out_dir: str | Path, per_class: int, split: str = "train", seed: int = 0,
                         size: int = 64, frames: int = 20, speed: int = 3, canvas: str = "shapes") -> Path:
    """Write per_class clips per direction into out_dir and a CSV `path,label,split`; returns the CSV."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(per_class):
        for label in DIRECTIONS:
            path = out_dir / f"{split}_{label}_{i:04d}.mp4"
            write_mp4(path, motion_frames(label, rng, size, frames, speed, canvas))
            rows.append({"path": str(path.resolve()), "label": label, "split": split})
    csv_path = out_dir / f"{split}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
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
