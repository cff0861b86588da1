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


def decoded_frames(path: str, size: Callable[[int, int], tuple[int, int]], fmt: str,
                   interpolation: str = "AREA", loop_filter: bool = True
                   ) -> Iterator[tuple[float, float, np.ndarray]]:
    """(fps, time_s, frame) for every frame, decoded in FFmpeg's threads (decode_threads) and scaled in
    swscale (one reused reformatter) to size(width, height). Times are the frames' own timestamps, not
    index / fps, so cut times stay right on variable-frame-rate sources. loop_filter=False skips the
    decoder's in-loop deblocking (H.264/HEVC), about a quarter of their decode time: the pictures move by
    about half a grey level on average (bikes.mp4), which a detector looking at frames shrunk tenfold for
    changes of tens of levels does not notice."""
    from av.video.reformatter import VideoReformatter

    from ivdata.media.probe import decode_threads
    with av.open(path) as c:
        vs = c.streams.video[0]
        decode_threads(vs)
        if not loop_filter:
            vs.codec_context.options = {**vs.codec_context.options, "skip_loop_filter": "all"}
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        w, h = size(vs.codec_context.width, vs.codec_context.height)
        scaler = VideoReformatter()
        for n, frame in enumerate(c.decode(vs)):
            img = scaler.reformat(frame, width=w, height=h, format=fmt, interpolation=interpolation).to_ndarray()
            yield fps, (frame.time if frame.time is not None else n / fps), img


def shots_from_cuts(cuts: list[int], times: list[float], fps: float) -> list[tuple[float, float]]:
    """Frame numbers where a new shot starts -> (start_s, end_s) spans from the first frame's time."""
    bounds = sorted({c for c in cuts if 0 < c < len(times)})
    edges = times + [times[-1] + 1.0 / fps]  # the last shot ends one frame after its last frame starts
    return [(edges[a] - edges[0], edges[b] - edges[0]) for a, b in zip([0] + bounds, bounds + [len(times)])]


class _OpenCvFrameScore:
    """Mixed into PySceneDetect's ContentDetector / AdaptiveDetector: the same frame score from the same
    HSV pixels, with OpenCV's SIMD absdiff + sumElems in place of the library's per-frame numpy arithmetic
    (a channel split and three int32 copies, differences and sums per frame). The sums are exact
    integers either way, so the score is the same float and the library's own decision logic (threshold,
    flash filter, adaptive window) sees the same numbers. Edge scoring (off by default) and statistics
    keep the library's path."""

    _prev_hsv = None

    def _calculate_frame_score(self, timecode, frame_img: np.ndarray) -> float:
        if self._weights.delta_edges > 0.0 or self.stats_manager is not None:
            return super()._calculate_frame_score(timecode, frame_img)
        import cv2
        hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)
        prev, self._prev_hsv = self._prev_hsv, hsv
        if prev is None:
            return 0.0
        pixels = float(hsv.shape[0] * hsv.shape[1])
        hue, sat, lum, _ = cv2.sumElems(cv2.absdiff(hsv, prev))
        components = (hue / pixels, sat / pixels, lum / pixels, 0.0)
        # the library's formula, term for term, so the float is bit-identical
        return sum(c * w for c, w in zip(components, self._weights)) / sum(abs(w) for w in self._weights)


def _scenedetect_detector(adaptive: bool, threshold: float, min_scene_len: int):
    from scenedetect import AdaptiveDetector, ContentDetector
    if adaptive:
        cls = type("FastAdaptiveDetector", (_OpenCvFrameScore, AdaptiveDetector), {})
        return cls(min_scene_len=min_scene_len)
    cls = type("FastContentDetector", (_OpenCvFrameScore, ContentDetector), {})
    return cls(threshold=threshold, min_scene_len=min_scene_len)


class PySceneDetectDetector:
    """PySceneDetect's detectors fed by our own decode loop, scoring frames with OpenCV
    (_OpenCvFrameScore). Frames are what PySceneDetect's own downscaling gives a detector (a 2-tap bilinear
    shrink, swscale's FAST_BILINEAR), at most `width` px wide, decoded without the loop filter: together
    with the scoring that is about one plain decode of the video, several times faster than the library's
    own path. The frame sums, the score formula and the decision logic (threshold, flash filter, adaptive
    window) are the library's; on the test media the cuts equal those of the library's detectors fed
    area-averaged 256 px frames of a full decode (tests/test_core_detectors.py)."""

    def __init__(self, threshold: float = 27.0, min_scene_len: int = 15, adaptive: bool = False, width: int = 128,
                 interpolation: str = "FAST_BILINEAR", loop_filter: bool = False):
        self.threshold, self.min_scene_len, self.adaptive, self.width = threshold, min_scene_len, adaptive, width
        self.interpolation, self.loop_filter = interpolation, loop_filter

    def check(self) -> None:
        import scenedetect  # noqa: F401  (the library is the detector)

    def scaled(self, w0: int, h0: int) -> tuple[int, int]:
        w = min(self.width, w0)
        return w, max(2, round(h0 * w / w0 / 2) * 2)

    def frames(self, path: str) -> Iterator[tuple[float, float, np.ndarray]]:
        return decoded_frames(path, self.scaled, "bgr24", self.interpolation, self.loop_filter)

    def detect(self, path: str) -> list[tuple[float, float]]:
        from scenedetect import FrameTimecode
        det = _scenedetect_detector(self.adaptive, self.threshold, self.min_scene_len)
        times: list[float] = []
        cuts: list = []
        fps = 25.0
        for n, (fps, t, img) in enumerate(self.frames(path)):
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
