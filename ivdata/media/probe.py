"""Container and stream facts of one media file, and whether it decodes.

Demuxing every packet (no decoding) gives the true frame count of what is actually in the file,
which catches truncated files whose header still promises the full length.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import av

from ivdata.errors import ItemFault


class MediaError(ItemFault):
    """A file that cannot be used, with a reason fit for the manifest's `error` column."""


@dataclass
class ProbeResult:
    container: str
    duration_s: float
    has_video: bool
    has_audio: bool
    fps: float | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    vcodec: str | None = None
    acodec: str | None = None
    audio_rate: int | None = None

    def as_row(self) -> dict:
        return asdict(self)


# Options for avformat_find_stream_info's look at the streams only (PyAV gives them to the decoders it
# opens while probing, not to those it decodes with later). Without them FFmpeg decodes up to 7 frames of an
# H.264 stream whose header does not state its frame reordering, before the caller has decoded anything: on a
# 720p file that is 30 ms of every open. A reader that only demuxes (probe's packet count, stream copy) or
# builds its own decoder from the stream parameters does not need those frames.
DEMUX_ONLY = {"skip_frame": "all"}


def probe(path: str) -> ProbeResult:
    """Probe `path`; raises MediaError with a short reason when it is not a usable video. One open: every
    video packet is demuxed (the frame count), and the first ones go through a decoder until it gives a
    frame (decodability, rotation)."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise MediaError(f"unreadable: {e.strerror}") from e
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore", options=DEMUX_ONLY)
    except av.FFmpegError as e:
        raise MediaError(f"not a readable media container: {_msg(e)}") from e
    with container:
        vstreams, astreams = container.streams.video, container.streams.audio
        if not vstreams:
            kind = "audio-only file" if astreams else "no video stream"
            raise MediaError(kind)
        vs = vstreams[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        fps = float(rate) if rate else None
        first = _FirstFrame(vs)
        # Demux every video packet: cheap, and the only honest frame count for a damaged file.
        npackets, end_pts = 0, None
        try:
            for pkt in container.demux(vs):
                if pkt.size == 0:
                    continue
                npackets += 1
                first.feed(pkt)
                if pkt.pts is not None:
                    end = pkt.pts + (pkt.duration or 0)
                    end_pts = end if end_pts is None or end > end_pts else end_pts
        except av.FFmpegError as e:
            raise MediaError(f"damaged stream after {npackets} packets: {_msg(e)}") from e
        if npackets == 0:
            raise MediaError("video stream has no frames")
        last_end = max(float(end_pts * vs.time_base), 0.0) if end_pts is not None else 0.0
        declared = vs.frames or 0
        if declared and npackets < 0.95 * declared:
            raise MediaError(f"truncated: {npackets} of {declared} frames present")
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        duration = max(last_end - start, 0.0)
        if duration <= 0 and container.duration:
            duration = container.duration / av.time_base
        frame = first.result()          # a file can demux and still not decode (unknown codec, broken headers)
    a = astreams[0] if astreams else None
    return ProbeResult(
        container=container.format.name.split(",")[0],
        duration_s=duration,
        has_video=True,
        has_audio=a is not None,
        fps=fps,
        num_frames=npackets,
        width=vs.codec_context.width,
        height=vs.codec_context.height,
        rotation=int(getattr(frame, "rotation", 0) or 0),
        vcodec=vs.codec_context.name,
        acodec=a.codec_context.name if a is not None else None,
        audio_rate=a.codec_context.sample_rate if a is not None else None,
    )


class _FirstFrame:
    """Decodes the packets the probe demuxes, only until the first frame comes out."""

    def __init__(self, stream):
        self.stream, self.frame, self.error = stream, None, None

    def feed(self, pkt) -> None:
        if self.frame is not None or self.error is not None:
            return
        try:
            frames = self.stream.decode(pkt)
        except av.FFmpegError as e:
            self.error = e
            return
        self.frame = frames[0] if frames else None

    def result(self):
        if self.frame is None and self.error is None:
            try:                         # a decoder that holds frames back (threads, reordering) gives them now
                self.frame = next(iter(self.stream.decode(None)), None)
            except av.FFmpegError as e:
                self.error = e
        if self.error is not None:
            raise MediaError(f"video does not decode: {_msg(self.error)}")
        if self.frame is None:
            raise MediaError("no decodable video frame")
        return self.frame


def decode_threads(stream) -> None:
    """Decode `stream` in FFmpeg's own choice of threads (frame and slice threads, as many as the machine
    has cores, as the ffmpeg tool does). One thread per pool worker spent up to 10-20 % less CPU on the
    benchmark's videos, but on a machine other programs share it got a smaller share of the cores: the
    shot split took 1.2-1.6x longer beside them."""
    stream.thread_type = "AUTO"


def _msg(e: Exception) -> str:
    return str(e).split(": '")[0].strip()[:300]


def count_frames_decoded(path: str) -> tuple[int, float]:
    """Decode every frame: (frame count, duration from the frame timestamps). For verification."""
    n, first, last = 0, None, None
    with av.open(path) as c:
        vs = c.streams.video[0]
        for frame in c.decode(vs):
            n += 1
            t = frame.time
            if t is not None:
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
        rate = vs.average_rate or vs.guessed_rate
    dur = (last - first + 1.0 / float(rate)) if (n and rate and first is not None) else 0.0
    return n, dur
