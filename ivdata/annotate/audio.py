"""A clip's audio as 16 kHz mono float32 (what Whisper and audio-caption models take), and silence.

Decoding is in-process with PyAV (ivdata.media.audio; no ffmpeg CLI). The clip store keeps a 16 kHz flac beside each
clip with audio; when it is there we read it, otherwise the clip's own audio track. A decode that
breaks off before the stream's end raises AudioDecodeError rather than returning a short signal,
so a half-read clip is recorded as failed, never captioned from a fragment.
"""
from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from ivdata.media.audio import decode_audio

RATE = 16000


class AudioDecodeError(RuntimeError):
    pass


@dataclass
class ClipAudio:
    samples: np.ndarray | None        # float32 mono at RATE; None when the file has no audio stream
    duration_s: float

    @property
    def has_audio(self) -> bool:
        return self.samples is not None


def load_audio(path: str, expect_duration_s: float | None = None, min_coverage: float = 0.9) -> ClipAudio:
    """Decode the first audio stream to 16 kHz mono float32.

    expect_duration_s: when given, a decode that yields less than `min_coverage` of it counts as a
    failure midway (a truncated or corrupt stream), not as a short clip."""
    try:
        samples, _ = decode_audio(path, rate=RATE, mono=True)
    except av.error.FFmpegError as e:
        raise AudioDecodeError(f"audio decode failed in {path}: {e}") from e
    if samples is None:
        return ClipAudio(None, float(expect_duration_s or 0.0))
    samples = samples[0]
    got = samples.size / RATE
    if expect_duration_s and got < min_coverage * expect_duration_s:
        raise AudioDecodeError(f"audio decode stopped at {got:.2f}s of {expect_duration_s:.2f}s in {path}")
    return ClipAudio(samples, got)


def rms_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def is_silent(samples: np.ndarray, threshold_dbfs: float = -50.0) -> bool:
    """True when the loudest half-second window stays below threshold_dbfs (a clip with one short
    sound among silence is not silent)."""
    if samples.size == 0:
        return True
    win = RATE // 2
    n = max(samples.size // win, 1)
    windows = samples[: n * win].reshape(n, -1) if samples.size >= win else samples.reshape(1, -1)
    loudest = max(rms_dbfs(w) for w in windows)
    return loudest < threshold_dbfs
