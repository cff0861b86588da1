"""Shot-boundary detection behind one interface: `detect(path) -> [(start_s, end_s), ...]`.

- PySceneDetect (default): content-aware HSV-difference detection, no weights needed.
- A learned detector (TransNetV2 / AutoShot style) given as a torch.export `.pt2` file (or, for older
  weights, a TorchScript file): it takes uint8 frames
  (batch, time, 27, 48, 3) and returns per-frame cut logits (batch, time[, 1]). Inference follows
  TransNetV2's procedure: 100-frame windows, 25 frames of context each side, the centre 50 kept.
"""
from __future__ import annotations

from typing import Protocol

import av
import numpy as np


class ShotDetector(Protocol):
    def detect(self, path: str) -> list[tuple[float, float]]: ...


def _whole(path: str) -> list[tuple[float, float]]:
    from ivdata.media.probe import probe
    return [(0.0, probe(path).duration_s)]


class PySceneDetectDetector:
    """PySceneDetect's detectors fed by our own decode loop: threaded PyAV decoding scaled to at most
    `width` px in swscale (one reused reformatter) runs several times faster than the library's own
    full-resolution path, and frame timestamps (not index / fps) keep cut times right on VFR sources."""

    def __init__(self, threshold: float = 27.0, min_scene_len: int = 15, adaptive: bool = False, width: int = 256):
        self.threshold, self.min_scene_len, self.adaptive, self.width = threshold, min_scene_len, adaptive, width

    def detect(self, path: str) -> list[tuple[float, float]]:
        from av.video.reformatter import VideoReformatter
        from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
        det = (AdaptiveDetector(min_scene_len=self.min_scene_len) if self.adaptive
               else ContentDetector(threshold=self.threshold, min_scene_len=self.min_scene_len))
        times: list[float] = []
        cuts: list = []
        with av.open(path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            fps = float(vs.average_rate or vs.guessed_rate or 25)
            w0, h0 = vs.codec_context.width, vs.codec_context.height
            w = min(self.width, w0)
            h = max(2, round(h0 * w / w0 / 2) * 2)
            scaler = VideoReformatter()
            for n, frame in enumerate(c.decode(vs)):
                img = scaler.reformat(frame, width=w, height=h, format="bgr24", interpolation="AREA").to_ndarray()
                times.append(frame.time if frame.time is not None else n / fps)
                cuts += det.process_frame(FrameTimecode(n, fps), img)
            if not times:
                return []
            cuts += det.post_process(FrameTimecode(len(times), fps))
        t0 = times[0]
        bounds = sorted({int(cut.frame_num) for cut in cuts if 0 < int(cut.frame_num) < len(times)})
        starts = [0] + bounds
        ends = bounds + [len(times)]
        end_time = lambda i: (times[i] if i < len(times) else times[-1] + 1.0 / fps) - t0
        return [(times[a] - t0, end_time(b)) for a, b in zip(starts, ends)]


class LearnedShotDetector:
    WINDOW, CONTEXT = 100, 25

    def __init__(self, weights: str, threshold: float = 0.5, device: str = "cpu"):
        import torch
        self.torch = torch
        if str(weights).endswith(".pt2"):   # torch.export: the format torch recommends now
            self.model = torch.export.load(weights).module()
        else:                               # TorchScript, as older detector ports ship
            self.model = torch.jit.load(weights, map_location=device).eval()
        self.threshold, self.device = threshold, device

    def frame_probabilities(self, frames: np.ndarray) -> np.ndarray:
        """frames: (T, 27, 48, 3) uint8 -> (T,) cut probability per frame."""
        torch, n = self.torch, len(frames)
        keep = self.WINDOW - 2 * self.CONTEXT
        pad_end = self.CONTEXT + (keep - n % keep if n % keep else 0)
        padded = np.concatenate([np.repeat(frames[:1], self.CONTEXT, 0), frames, np.repeat(frames[-1:], pad_end, 0)])
        out = []
        with torch.no_grad():
            for i in range(0, len(padded) - self.WINDOW + 1, keep):
                win = torch.from_numpy(padded[i:i + self.WINDOW][None]).to(self.device)
                logits = self.model(win)
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                out.append(torch.sigmoid(logits.reshape(1, self.WINDOW, -1)[0, self.CONTEXT:self.CONTEXT + keep, 0]).cpu().numpy())
        return np.concatenate(out)[:n]

    def detect(self, path: str) -> list[tuple[float, float]]:
        frames, fps = decode_small_frames(path)
        probs = self.frame_probabilities(frames)
        cuts = [i for i in range(1, len(probs)) if probs[i] >= self.threshold and probs[i - 1] < self.threshold]
        bounds = [0] + cuts + [len(frames)]
        return [(a / fps, b / fps) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def decode_small_frames(path: str, size: tuple[int, int] = (48, 27)) -> tuple[np.ndarray, float]:
    with av.open(path) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        frames = [f.to_ndarray(width=size[0], height=size[1], format="rgb24") for f in c.decode(vs)]
    return np.stack(frames), fps


def make_detector(kind: str = "pyscenedetect", weights: str | None = None, threshold: float | None = None) -> ShotDetector:
    if kind == "pyscenedetect":
        return PySceneDetectDetector(threshold=threshold or 27.0)
    if kind == "adaptive":
        return PySceneDetectDetector(adaptive=True)
    if kind in ("learned", "transnetv2", "autoshot"):
        if not weights:
            raise ValueError(f"detector {kind!r} needs --weights (a torch.export .pt2 or TorchScript file)")
        return LearnedShotDetector(weights, threshold=threshold or 0.5)
    raise ValueError(f"unknown shot detector {kind!r} (pyscenedetect, adaptive, learned)")
