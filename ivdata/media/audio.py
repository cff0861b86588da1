"""Audio in and out with PyAV: decode a span to float32 at a chosen rate, write 16 kHz mono FLAC."""
from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import av
import numpy as np

from ivdata.fsutil import temp_name



def decode_audio(src: str, start: float = 0.0, end: float | None = None, rate: int | None = 16000,
                 mono: bool = True) -> tuple[np.ndarray | None, int | None]:
    """Decode [start, end) of the first audio stream to float32 (channels, samples) at `rate` Hz
    (the source rate when None). Returns (None, None) when the file has no audio stream."""
    with av.open(src) as c:
        if not c.streams.audio:
            return None, None
        ain = c.streams.audio[0]
        out_rate = rate or ain.codec_context.sample_rate
        nch = 1 if mono else min(2, ain.codec_context.channels or 1)
        resampler = av.AudioResampler(format="fltp", layout="mono" if nch == 1 else "stereo", rate=out_rate)
        if start > 0:
            c.seek(int(max(start - 0.5, 0) / ain.time_base), stream=ain, backward=True)
        chunks, first_t = [], None
        for frame in c.decode(ain):
            if frame.time is not None and end is not None and frame.time >= end:
                break
            for rf in resampler.resample(frame):
                if first_t is None:
                    first_t = rf.time if rf.time is not None else frame.time or 0.0
                chunks.append(rf.to_ndarray())
        for rf in resampler.resample(None):
            chunks.append(rf.to_ndarray())
    if not chunks:
        return np.zeros((nch, 0), np.float32), out_rate
    data = np.concatenate(chunks, axis=1).astype(np.float32)
    skip = int(round(max(start - (first_t or 0.0), 0.0) * out_rate))
    data = data[:, skip:]
    if end is not None:
        data = data[:, : max(int(round((end - start) * out_rate)), 0)]
    return data, out_rate


def encode_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    """Encode planar float32 samples (channels, n) into `stream` of an open output container and flush it.
    Frames are cut to the encoder's frame size (AAC needs exactly 1024); the stream converts the sample
    format when it differs (e.g. FLAC's s16)."""
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    step = stream.codec_context.frame_size or 4096
    for i in range(0, samples.shape[1], step):
        chunk = np.ascontiguousarray(samples[:, i:i + step], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, i
        for pkt in stream.encode(frame):
            container.mux(pkt)
    for pkt in stream.encode(None):
        container.mux(pkt)


def write_flac(samples: np.ndarray, rate: int, out: Path) -> None:
    """Write (1, n) float32 audio as 16-bit FLAC, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    try:
        with av.open(str(tmp), "w", format="flac") as c:
            s = c.add_stream("flac", rate=rate, layout="mono", format="s16")
            encode_audio(c, s, np.clip(samples, -1, 1), rate)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=64)
def silent_flac(samples: int, rate: int = 16000) -> bytes:
    """`samples` zeros as 16-bit mono FLAC: the placeholder member of a clip without audio (about 9 KB for
    5 s: FFmpeg's 8 KiB of header padding, then a few bytes per block of silence)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as c:
        s = c.add_stream("flac", rate=rate, layout="mono", format="s16")
        encode_audio(c, s, np.zeros((1, max(int(samples), 1)), np.float32), rate)
    return buf.getvalue()
