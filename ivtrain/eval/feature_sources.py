"""What feature export reads: the items of a source (shard samples or untrimmed videos), each cut into windows.

A source is a shard set (one item per sample, its key the clip_id of the manifest that wrote it) or a list of
videos (one file, a directory of videos, a .txt of paths, or a .csv / .parquet / .jsonl table with a `path`
column and optionally `video_id`, e.g. `iv manifest query "SELECT video_id, path FROM videos" --out v.parquet`).

Windows. Without a window length an item is one window over all its frames. With `window` W (source frames) and
a stride s (frames, or seconds turned into round(s x fps) frames per video), window k spans frames
[k s, k s + W) for every k whose window fits in the video (a video shorter than W is one window over all its
frames). From each window the encoder's T frames are taken as InternVideo2 evaluates a clip: the window cut
into T equal segments and the middle frame of each (ivtrain.data.sampling.sparse_uniform_indices), then the
centre square resized to the encoder's input (ivtrain.data.transforms.clip_transform, evaluation mode). A
window's times are its frame span over the stream's average frame rate (start / fps, end / fps).

Decoding is one sequential pass with PyAV over each video, keeping only the frames some window still needs, so
an hour-long video costs the memory of the windows in flight, not of its frames. Windows are planned on the
frame count the container states (or counts, packet by packet); a window is given once the decoder has reached
its last frame, so a decoder that stops short gives the windows it reached, and when it reached none, the item is
planned again on the frames it did decode.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ivtrain.data.index import ShardIndex, resolve_shards
from ivtrain.data.sampling import sparse_uniform_indices
from ivtrain.data.transforms import clip_transform

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
TABLE_SUFFIXES = {".csv", ".parquet", ".jsonl"}


@dataclass(frozen=True)
class Item:
    id: str                       # file names and index rows use it: the shard key (clip_id) or the video id
    source: str                   # the video file, or the shard holding the sample
    sample: int | None = None     # the sample's number in the shard index (shard sources)
    clip_id: str | None = None    # the manifest's ids, for joining features with the manifest
    video_id: str | None = None


@dataclass(frozen=True)
class Windows:
    frames: int                    # frames the encoder takes from each window (its num_frames)
    size: int                      # the encoder's input side
    window: int | None = None      # source frames per window; None: each item is one window over all its frames
    stride: int | None = None      # frames between window starts
    stride_s: float | None = None  # or seconds between window starts

    def __post_init__(self):
        if self.window is not None and self.window < 1:
            raise ValueError(f"--window must be at least 1 frame, got {self.window}")
        if self.window is None and (self.stride or self.stride_s):
            raise ValueError("--stride needs --window (without one, each clip or video is one window)")
        if (self.stride is not None and self.stride < 1) or (self.stride_s is not None and self.stride_s <= 0):
            raise ValueError("--stride must be positive")

    def stride_frames(self, fps: float) -> int:
        if self.stride is not None:
            return self.stride
        if self.stride_s is not None:
            if not math.isfinite(fps) or fps <= 0:
                raise ValueError("the video states no frame rate: give --stride in frames")
            return max(1, round(self.stride_s * fps))
        return self.window

    def spans(self, n: int, fps: float) -> list[tuple[int, int]]:
        """(start, end) frame spans of the windows over a video of n frames."""
        if n <= 0:
            raise ValueError("no decodable frames")
        if self.window is None or n <= self.window:
            return [(0, n)]
        step = self.stride_frames(fps)
        return [(s, s + self.window) for s in range(0, n - self.window + 1, step)]

    def sampled(self, span: tuple[int, int]) -> np.ndarray:
        """The frames the encoder sees from one window."""
        return span[0] + sparse_uniform_indices(span[1] - span[0], self.frames, None)


def parse_stride(text: str | None) -> tuple[int | None, float | None]:
    """'16' -> 16 frames; '0.5s' -> 0.5 seconds."""
    if text is None:
        return None, None
    try:
        return (None, float(text[:-1])) if text.endswith("s") else (int(text), None)
    except ValueError:
        raise ValueError(f"--stride takes frames (16) or seconds (0.5s), got {text!r}") from None


# ------------------------------------------------------------------------------------------ decoding

def _open(media: str | bytes):
    import av

    return av.open(io.BytesIO(media) if isinstance(media, bytes) else media)


def frame_count(media: str | bytes) -> tuple[int, float]:
    """(frames the container states, or counts packet by packet; average frame rate, NaN when unknown)."""
    with _open(media) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        n = stream.frames or sum(1 for p in container.demux(stream) if p.size)
    return n, float(rate) if rate else math.nan


def _decoded(media: str | bytes) -> Iterator[tuple[int, object]]:
    with _open(media) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from enumerate(container.decode(stream))


def _clip_frame(frame, size: int) -> torch.Tensor:
    """(3, 1, size, size) uint8: one decoded frame as the encoder's input sees it."""
    return clip_transform(frame.to_ndarray(format="rgb24")[None], size, False, [], 0, False, None)


def window_clips(media: str | bytes, windows: Windows) -> Iterator[tuple[tuple[int, int], float, torch.Tensor]]:
    """((start, end) frames, fps, (3, T, S, S) uint8 clip) for each window of one video, in order."""
    n, fps = frame_count(media)
    for _ in range(2):
        spans = windows.spans(n, fps)
        picks = [windows.sampled(span) for span in spans]
        needed = set(np.concatenate(picks).tolist())
        kept: dict[int, torch.Tensor] = {}
        given = decoded = 0
        for i, frame in _decoded(media):
            decoded = i + 1
            if i in needed:
                kept[i] = _clip_frame(frame, windows.size)
            while given < len(spans) and spans[given][1] - 1 <= i:   # the decoder reached the window's end
                yield spans[given], fps, torch.cat([kept[j] for j in picks[given]], dim=1)
                given += 1
                first_needed = picks[given][0] if given < len(spans) else decoded
                for j in [j for j in kept if j < first_needed]:
                    del kept[j]
            if given == len(spans):
                return
        if given or not decoded:   # windows reached stand; nothing decoded is an unreadable video
            if not decoded:
                raise ValueError("no decodable frames")
            return
        n = decoded                # the decoder gave fewer frames than the container states: plan on those
    raise ValueError(f"the decoder gave fewer than the {n} frames it gave on the first pass")


# ------------------------------------------------------------------------------------------ sources

def _table_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _check_ids(items: list[Item], what: str) -> list[Item]:
    seen: dict[str, str] = {}
    for item in items:
        if not item.id or item.id in (".", "..") or any(c in item.id for c in "/\\\0"):
            raise ValueError(f"{what}: {item.id!r} cannot name a feature file (no slashes; give a video_id column)")
        if item.id in seen:
            raise ValueError(f"{what}: {seen[item.id]} and {item.source} share the id {item.id!r} "
                             "(give ids in a table with a video_id column)")
        seen[item.id] = item.source
    return items


def video_items(spec: str) -> list[Item]:
    """The videos of a file, directory, .txt list or table (module docstring); ids are the video_id column or
    the file names' stems. Files that do not exist stay in the list: their export is recorded as failed."""
    path = Path(spec)
    if path.is_dir():
        entries = [(p, None) for p in sorted(path.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
    elif path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        entries = [(Path(ln) if Path(ln).is_absolute() else path.parent / ln, None) for ln in lines]
    elif path.suffix in TABLE_SUFFIXES:
        rows = _table_rows(path)
        if rows and "path" not in rows[0]:
            raise ValueError(f"{path}: a video table needs a `path` column (and optionally `video_id`)")
        entries = [(Path(r["path"]) if Path(r["path"]).is_absolute() else path.parent / r["path"],
                    r.get("video_id")) for r in rows]
    else:
        entries = [(path, None)]
    if not entries:
        raise ValueError(f"no videos in {path}")
    items = [Item(id=str(vid) if vid is not None else p.stem, source=str(p), video_id=str(vid) if vid else p.stem)
             for p, vid in entries]
    return _check_ids(items, str(path))


def is_shard_source(spec: str) -> bool:
    """A .wids.json, a .tar, a directory of tars, or a .txt listing tars; anything else is a list of videos."""
    path = Path(spec)
    if path.name.endswith(".json") or path.suffix == ".tar":
        return True
    if path.is_dir():
        return any(path.glob("*.tar"))
    if path.suffix == ".txt" and path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return bool(lines) and all(ln.endswith(".tar") for ln in lines)
    return False


class Source:
    """The items of a shard set or of a video list, and the media bytes or path of each."""

    def __init__(self, spec: str):
        self.spec = spec
        if not Path(spec).exists():
            raise FileNotFoundError(f"source {spec} does not exist")
        self.index = None
        if is_shard_source(spec):
            self.index = ShardIndex.open(spec)
            shards = resolve_shards(spec)
            self.items = _check_ids([Item(id=self.index.key(i), source=str(shards[self.index.shard_of[i]]), sample=i)
                                     for i in range(len(self.index))], spec)
        else:
            self.items = video_items(spec)

    def media(self, item: Item) -> str | bytes:
        if self.index is None:
            if not Path(item.source).is_file():
                raise FileNotFoundError(f"{item.source} does not exist")
            return item.source
        if self.index.media(item.sample) != "mp4":
            raise ValueError(f"an image sample ({self.index.media(item.sample)}), not a video")
        return self.index.read(item.sample, "mp4")

    def with_manifest_ids(self, item: Item) -> Item:
        """The item with the clip_id and video_id its shard json records (shard sources)."""
        if self.index is None:
            return item
        meta = self.index.metadata(item.sample)
        return Item(item.id, item.source, item.sample, meta.get("clip_id", item.id), meta.get("video_id"))


class WindowStream(IterableDataset):
    """Chunks of at most `chunk` windows of the items at positions `todo`, decoded in the loader's workers (worker
    w of n takes todo[w::n]). A chunk: {pos, first (window number), spans, fps, clips (k, 3, T, S, S) uint8,
    last, total (windows of the item, on its last chunk)}; an item that fails: {pos, error}."""

    def __init__(self, source: Source, todo: list[int], windows: Windows, chunk: int):
        self.source, self.todo, self.windows, self.chunk = source, todo, windows, chunk

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for pos in self.todo[worker::workers]:
            try:
                clips, spans, fps, first = [], [], math.nan, 0
                for span, fps, clip in window_clips(self.source.media(self.source.items[pos]), self.windows):
                    clips.append(clip)
                    spans.append(span)
                    if len(clips) == self.chunk:
                        yield self._chunk(pos, first, spans, fps, clips, None)
                        first, clips, spans = first + len(clips), [], []
                yield self._chunk(pos, first, spans, fps, clips, first + len(clips))
            except Exception as e:   # an unreadable video is recorded; the export goes on
                yield {"pos": pos, "error": f"{type(e).__name__}: {e}"[:500]}

    @staticmethod
    def _chunk(pos, first, spans, fps, clips, total) -> dict:
        return {"pos": pos, "first": first, "spans": spans, "fps": fps, "total": total,
                "clips": torch.stack(clips) if clips else None}


def single_thread_worker(worker_id: int) -> None:
    torch.set_num_threads(1)   # two decoding workers must not each spawn a thread per core beside the encoder
