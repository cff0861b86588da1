"""Uniformly spaced RGB frames of a clip, decoded with PyAV (the sampler every curation model shares).

An image is a clip whose every frame is the image: embedders, scorers and captioners see it as a still
clip (its embedding is its frame's; its motion is zero).
"""
from __future__ import annotations

import os

import av
import numpy as np

from ivdata.media.image import IMAGE_EXTS, decode_rgb
from ivdata.media.probe import MediaError


def sample_frames(path: str, num: int = 8, max_side: int | None = 256) -> list[np.ndarray]:
    """`num` RGB uint8 frames at the centres of `num` equal slices of the clip."""
    if num < 1:
        raise ValueError("num must be >= 1")
    return frames_at(path, lambda start, dur: [start + dur * (i + 0.5) / num for i in range(num)], num, max_side)


def frame_pairs(path: str, num_pairs: int = 4, gap_s: float = 0.25, max_side: int | None = 160
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`num_pairs` pairs of frames `gap_s` apart, spread over the clip (for motion estimates)."""
    def times(start, dur):
        gap = min(gap_s, dur / (2 * num_pairs))
        out = []
        for i in range(num_pairs):
            t = start + (dur - gap) * (i + 0.5) / num_pairs
            out += [t, t + gap]
        return out
    f = frames_at(path, times, 2 * num_pairs, max_side)
    return [(f[2 * i], f[2 * i + 1]) for i in range(num_pairs)]


def frames_at(path: str, times, num: int, max_side: int | None) -> list[np.ndarray]:
    """Frames for the (sorted) target times `times(start_s, duration_s)` returns.

    Decodes sequentially (clips are short) and keeps, for each target time, the first frame at or after
    it; frames are shrunk so the longer side is at most `max_side` (scorers look at small frames).
    """
    if os.path.splitext(str(path))[1].lower() in IMAGE_EXTS:
        return [decode_rgb(str(path), max_side)] * num
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise MediaError(f"cannot open {path}: {e}") from e
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        tb = float(vs.time_base)
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        duration = float(vs.duration * vs.time_base) if vs.duration else (
            container.duration / av.time_base if container.duration else None)
        targets = list(times(start, duration)) if duration else None
        frames: list[np.ndarray] = []
        undated: list = []          # only when the stream has no duration: keep all, pick after
        last, ti = None, 0
        for frame in container.decode(vs):
            last = frame
            if targets is None:
                undated.append(frame)
                continue
            t = frame.pts * tb if frame.pts is not None else start
            while ti < num and t >= targets[ti] - 1e-6:
                frames.append(_rgb(frame, max_side))
                ti += 1
            if ti >= num:
                break
    if last is None:
        raise MediaError(f"{path}: no decodable frames")
    if targets is None:
        idx = np.linspace(0, len(undated) - 1, num).round().astype(int)
        return [_rgb(undated[i], max_side) for i in idx]
    while len(frames) < num:  # the stream ended before the last targets (short or damaged tail)
        frames.append(frames[-1] if frames else _rgb(last, max_side))
    return frames


def _rgb(frame, max_side: int | None) -> np.ndarray:
    w, h = frame.width, frame.height
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        frame = frame.reformat(width=max(2, round(w * s / 2) * 2), height=max(2, round(h * s / 2) * 2))
    return frame.to_ndarray(format="rgb24")
