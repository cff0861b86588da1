"""Shot-boundary detection behind one interface: `detect(path) -> [(start_s, end_s), ...]`.

- PySceneDetect (default): content-aware HSV-difference detection, no weights needed.
- A learned detector (TransNetV2 / AutoShot style) given as a torch.export `.pt2` file (or, for older
  weights, a TorchScript file): it takes uint8 frames
  (batch, time, 27, 48, 3) and returns per-frame cut logits (batch, time[, 1]). Inference follows
  TransNetV2's procedure: 100-frame windows, 25 frames of context each side, the centre 50 kept.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

import av
import numpy as np


class ShotDetector(Protocol):
    def detect(self, path: str) -> list[tuple[float, float]]: ...

    def check(self) -> None:
        """Raise when the detector cannot run at all (before any video is handed to it)."""


def decoded_frames(path: str, size: Callable[[int, int], tuple[int, int]], fmt: str
                   ) -> Iterator[tuple[float, float, np.ndarray]]:
    """(fps, time_s, frame) for every frame, decoded in PyAV's threads and scaled in swscale (one reused
    reformatter) to size(width, height). Times are the frames' own timestamps, not index / fps, so cut
    times stay right on variable-frame-rate sources."""
    from av.video.reformatter import VideoReformatter
    with av.open(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        w, h = size(vs.codec_context.width, vs.codec_context.height)
        scaler = VideoReformatter()
        for n, frame in enumerate(c.decode(vs)):
            img = scaler.reformat(frame, width=w, height=h, format=fmt, interpolation="AREA").to_ndarray()
            yield fps, (frame.time if frame.time is not None else n / fps), img


def shots_from_cuts(cuts: list[int], times: list[float], fps: float) -> list[tuple[float, float]]:
    """Frame numbers where a new shot starts -> (start_s, end_s) spans from the first frame's time."""
    bounds = sorted({c for c in cuts if 0 < c < len(times)})
    edges = times + [times[-1] + 1.0 / fps]  # the last shot ends one frame after its last frame starts
    return [(edges[a] - edges[0], edges[b] - edges[0]) for a, b in zip([0] + bounds, bounds + [len(times)])]


class PySceneDetectDetector:
    """PySceneDetect's detectors fed by our own decode loop (decoded_frames, at most `width` px wide):
    several times faster than the library's own full-resolution path."""

    def __init__(self, threshold: float = 27.0, min_scene_len: int = 15, adaptive: bool = False, width: int = 256):
        self.threshold, self.min_scene_len, self.adaptive, self.width = threshold, min_scene_len, adaptive, width

    def check(self) -> None:
        import scenedetect  # noqa: F401  (the library is the detector)

    def scaled(self, w0: int, h0: int) -> tuple[int, int]:
        w = min(self.width, w0)
        return w, max(2, round(h0 * w / w0 / 2) * 2)

    def detect(self, path: str) -> list[tuple[float, float]]:
        from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
        det = (AdaptiveDetector(min_scene_len=self.min_scene_len) if self.adaptive
               else ContentDetector(threshold=self.threshold, min_scene_len=self.min_scene_len))
        times: list[float] = []
        cuts: list = []
        fps = 25.0
        for n, (fps, t, img) in enumerate(decoded_frames(path, self.scaled, "bgr24")):
            times.append(t)
            cuts += det.process_frame(FrameTimecode(n, fps), img)
        if not times:
            return []
        cuts += det.post_process(FrameTimecode(len(times), fps))
        return shots_from_cuts([int(cut.frame_num) for cut in cuts], times, fps)


class LearnedShotDetector:
    WINDOW, CONTEXT = 100, 25
    SIZE = (48, 27)  # TransNetV2's input frames, width x height

    def __init__(self, weights: str, threshold: float = 0.5, device: str = "cpu"):
        import torch
        self.torch = torch
        if str(weights).endswith(".pt2"):   # torch.export: the format torch recommends now
            self.model = torch.export.load(weights).module()
        else:                               # TorchScript, as older detector ports ship
            self.model = torch.jit.load(weights, map_location=device).eval()
        self.threshold, self.device = threshold, device

    def check(self) -> None:
        """One window of blank frames through the model: weights that load but do not take TransNetV2's
        input, or return something else, fail here."""
        probs = self.frame_probabilities(np.zeros((1, self.SIZE[1], self.SIZE[0], 3), np.uint8))
        if probs.shape != (1,):
            raise ValueError(f"the model gave {probs.shape} probabilities for 1 frame")

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
        decoded = list(decoded_frames(path, lambda w, h: self.SIZE, "rgb24"))
        if not decoded:
            return []
        fps, times = decoded[0][0], [t for _, t, _ in decoded]
        probs = self.frame_probabilities(np.stack([img for _, _, img in decoded]))
        cuts = [i for i in range(1, len(probs)) if probs[i] >= self.threshold and probs[i - 1] < self.threshold]
        return shots_from_cuts(cuts, times, fps)


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
