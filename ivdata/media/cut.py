"""Cut a span of a video into an mp4 clip, two ways.

copy      stream copy of whole GOPs: the clip starts at the last keyframe at or before the requested
          start and ends at the first keyframe at or after the requested end. No decoding, no quality
          loss, spans may be longer than asked.
reencode  frame-accurate: decode, keep frames whose timestamps fall in [start, end), optionally resample
          to a target fps and resize to a target short side, encode H.264 (libx264) + AAC.

Both write to a temporary name and rename, so a clip file is either complete or absent. A ClipSource opens a
source once for all the clips cut from it: each span is a seek on the same demuxer (an open costs FFmpeg a
look at the streams, and re-opening per clip cost more than the stream copy itself). Each cut returns what
it wrote (CutResult: the span the file holds, its frame count, size, rate, audio), so nothing re-reads the
clip to learn it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ivdata.fsutil import temp_name

from ivdata.media.audio import decode_audio, decode_audio_from, encode_audio
from ivdata.media.probe import MediaError, _msg, decode_threads

EPS = 1e-6


@dataclass
class CutResult:
    start_s: float          # the span the file holds, in source time: its first frame shows source time
    end_s: float            # start_s, its last frame ends at end_s (copy mode: keyframe-aligned)
    num_frames: int         # video frames (packets) written
    fps: float
    width: int
    height: int
    has_audio: bool

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps else self.end_s - self.start_s



class ClipSource:
    """A source opened once for every clip cut from it (use as a context manager)."""

    def __init__(self, src: str):
        self.src = src
        try:
            self.inp = av.open(src)
        except av.FFmpegError as e:
            raise MediaError(f"cannot open the source: {_msg(e)}") from e
        if not self.inp.streams.video:
            self.inp.close()
            raise MediaError("the source has no video stream")
        decode_threads(self.inp.streams.video[0])

    def close(self) -> None:
        self.inp.close()

    def __enter__(self) -> "ClipSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- copy mode
    def copy(self, out: Path, start: float, end: float) -> CutResult:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(out)
        inp = self.inp
        try:
            vin = inp.streams.video[0]
            ain = inp.streams.audio[0] if inp.streams.audio else None
            packets, k0, k1 = _collect_gops(inp, vin, ain, start, end)
            vpk = [p for p in packets if p.video]
            if not vpk:
                raise MediaError(f"no video packets in [{start:.3f}, {end:.3f})")
            has_audio = any(not p.video for p in packets)
            _mux(vin, ain if has_audio else None, tmp, packets, k0)
            rate = vin.average_rate or vin.guessed_rate
            w, h = vin.codec_context.width, vin.codec_context.height
            os.replace(tmp, out)
            t_end = max(p.time + p.duration * p.tb for p in vpk)
            fps = float(rate) if rate else len(vpk) / max(t_end - k0, EPS)
            return CutResult(k0, min(t_end, k1), len(vpk), fps, w, h, has_audio)
        except av.FFmpegError as e:
            raise MediaError(f"stream copy failed: {_msg(e)}") from e
        finally:
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------- reencode mode
    def reencode(self, out: Path, start: float, end: float, short_side: int | None = None,
                 fps: float | None = None, crf: int = 23, preset: str = "veryfast",
                 audio: bool = True, x264_params: str | None = None) -> CutResult:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(out)
        inp = self.inp
        try:
            with av.open(str(tmp), "w", format="mp4") as outc:
                vin = inp.streams.video[0]
                src_rate = Fraction(vin.average_rate or vin.guessed_rate or 25)
                out_rate = Fraction(fps).limit_denominator(1001) if fps else src_rate
                w, h = target_size(vin.codec_context.width, vin.codec_context.height, short_side)
                vout = outc.add_stream("libx264", rate=out_rate)
                vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
                # one encoder thread: with threads libx264 gave different bytes for the same clip from run to
                # run (3 of 16 small clips over 6 encodes), and the clip store is addressed by the bytes' sha256.
                # The cut stage runs clips in parallel workers, so the cores stay busy. One thread leaves a
                # residue (about 1 % of tiny 64 px clips still differ; none of bigbuckbunny's);
                # x264_params="no-mbtree=1" removes it, at 25 % more bytes on bigbuckbunny, so it is the
                # caller's choice, not the default.
                options = {"crf": str(crf), "preset": preset, "threads": "1"}
                if x264_params:
                    options["x264-params"] = x264_params
                vout.options = options
                vout.codec_context.time_base = 1 / out_rate
                ain = inp.streams.audio[0] if (audio and inp.streams.audio) else None
                aout = None
                if ain is not None:
                    arate = ain.codec_context.sample_rate
                    aout = outc.add_stream("aac", rate=arate)
                    aout.layout = "stereo" if (ain.codec_context.channels or 1) >= 2 else "mono"
                n, frame_time = 0, 1 / out_rate
                # one scaler for the clip: frame.reformat() builds a new one per frame, whose set-up for an
                # area filter cost more than the scaling
                scaler = VideoReformatter()
                for frame in _frames_in_span(inp, vin, start, end, out_rate, src_rate):
                    f = scaler.reformat(frame, width=w, height=h, format="yuv420p", interpolation="AREA")
                    f.pts, f.time_base = n, frame_time
                    n += 1
                    for pkt in vout.encode(f):
                        outc.mux(pkt)
                if n == 0:
                    raise MediaError(f"no decodable frames in [{start:.3f}, {end:.3f})")
                for pkt in vout.encode(None):
                    outc.mux(pkt)
                clip_end = start + n / float(out_rate)
                has_audio = False
                if aout is not None:
                    # an open of its own: from the start of a file that decodes the first AAC frames as a plain
                    # read does, which a seek back to 0 on the shared demuxer does not, bit for bit
                    samples, arate = decode_audio(self.src, start, clip_end, rate=aout.codec_context.sample_rate,
                                                  mono=aout.layout.name == "mono")
                    if samples is not None and samples.size:
                        encode_audio(outc, aout, samples, arate)
                        has_audio = True
            if not has_audio and aout is not None:
                # Declared an audio track but the span had no audio samples: rewrite without the empty track.
                return self.reencode(out, start, end, short_side, fps, crf, preset, audio=False,
                                     x264_params=x264_params)
            os.replace(tmp, out)
            return CutResult(start, clip_end, n, float(out_rate), w, h, has_audio)
        except av.FFmpegError as e:
            raise MediaError(f"re-encode failed: {_msg(e)}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def audio(self, start: float, end: float, rate: int = 16000, mono: bool = True):
        """The source's first audio track over [start, end) as float32 (channels, samples) at `rate`, or
        (None, None) without one: what a clip cut from that span holds."""
        try:
            return decode_audio_from(self.inp, start, end, rate=rate, mono=mono)
        except av.FFmpegError as e:
            raise MediaError(f"audio does not decode: {_msg(e)}") from e


def cut_copy(src: str, out: Path, start: float, end: float) -> CutResult:
    with ClipSource(src) as source:
        return source.copy(out, start, end)


def cut_reencode(src: str, out: Path, start: float, end: float, short_side: int | None = None,
                 fps: float | None = None, crf: int = 23, preset: str = "veryfast",
                 audio: bool = True, x264_params: str | None = None) -> CutResult:
    with ClipSource(src) as source:
        return source.reencode(out, start, end, short_side, fps, crf, preset, audio, x264_params)


@dataclass(slots=True)
class _Pkt:
    packet: av.Packet       # the demuxed packet itself: muxed as it is, its bytes never copied
    video: bool
    pts: int                # as demuxed (muxing rewrites the packet's own)
    dts: int | None
    duration: int
    tb: float
    is_keyframe: bool

    @property
    def time(self) -> float:
        return self.pts * self.tb


def _collect_gops(inp, vin, ain, start: float, end: float) -> tuple[list[_Pkt], float, float]:
    """One demux pass over just the GOPs that cover [start, end): video packets in decode order from the
    last keyframe at or before `start` up to the first keyframe at or after `end` (k0, k1), and the audio
    packets of [k0, k1). The seek lands on a keyframe before `start`; if it lands late, read from 0."""
    streams = [vin] + ([ain] if ain is not None else [])
    tbs = {s.index: float(s.time_base) for s in streams}
    for seek_to in (start, 0.0):
        inp.seek(int(max(seek_to - EPS, 0) / vin.time_base), stream=vin, backward=True)
        kept: list[_Pkt] = []
        audio_seen: list[_Pkt] = []          # audio demuxed before k0 is known may still belong to the clip
        k0, k1 = None, float("inf")
        for pkt in inp.demux(*streams):
            if pkt.size == 0 or pkt.pts is None:
                continue
            index = pkt.stream_index
            video = index == vin.index
            p = _Pkt(pkt, video, pkt.pts, pkt.dts, pkt.duration or 0, tbs[index], bool(pkt.is_keyframe))
            t = p.time
            if video and p.is_keyframe:
                if k0 is None or t <= start + EPS:
                    # The clip (re)starts here: the latest keyframe at or before `start`, or the first
                    # keyframe at all when none precedes `start`. Audio already read from t on is kept.
                    k0 = t
                    kept = [a for a in audio_seen + kept if not a.video and a.time >= k0 - EPS]
                    audio_seen = []
                elif k1 == float("inf") and t >= end - EPS:
                    k1 = t
            if video:
                if k0 is not None and k1 == float("inf"):
                    kept.append(p)
            elif k0 is None:
                audio_seen.append(p)
            elif k0 - EPS <= t < k1 - EPS:
                kept.append(p)
            if k1 != float("inf") and (ain is None or (not video and t >= k1 - EPS)):
                break
        if k0 is not None and (k0 <= start + EPS or seek_to == 0.0):
            return kept, k0, k1
    raise MediaError("no keyframe found")


def _mux(vin, ain, tmp: Path, packets: list[_Pkt], t0: float) -> None:
    with av.open(str(tmp), "w", format="mp4") as outc:
        vout = outc.add_stream_from_template(vin)
        aout = outc.add_stream_from_template(ain) if ain is not None else None
        # Rebase so the first video packet's dts is 0 (pts of B-frame streams then start slightly above 0).
        first_v = next(p for p in packets if p.video)
        v_off = first_v.dts if first_v.dts is not None else first_v.pts
        for p in packets:
            stream = vout if p.video else aout
            if stream is None:
                continue
            off = v_off if p.video else int(round(t0 / p.tb))
            pkt = p.packet                    # keeps its stream's time base: mux rescales from it
            pkt.pts = p.pts - off
            pkt.dts = (p.dts - off) if p.dts is not None else None
            pkt.stream = stream
            outc.mux(pkt)


# ------------------------------------------------------------------------------- reencode helpers
def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if not short_side or min(width, height) <= short_side:
        return _even(width), _even(height)
    scale = short_side / min(width, height)
    return _even(width * scale), _even(height * scale)


def _frames_in_span(inp, vin, start: float, end: float, out_rate: Fraction, src_rate: Fraction):
    """Yield output frame n = the last source frame shown at time start + n / out_rate, for every
    target time in [start, end) that the source covers. Frames are streamed, never all held."""
    step, src_step = 1.0 / float(out_rate), 1.0 / float(src_rate)
    n_out = int(np.floor((end - start) / step + EPS))
    inp.seek(int(max(start - 0.001, 0) / vin.time_base), stream=vin, backward=True, any_frame=False)
    n, prev = 0, None
    try:
        for frame in inp.decode(vin):
            t = frame.time if frame.time is not None else 0.0
            # Every target time before this frame shows the previous frame (or this one if none came before).
            while n < n_out and start + n * step < t - EPS:
                yield prev if prev is not None else frame
                n += 1
            prev = frame
            if n >= n_out:
                return
    except av.FFmpegError:
        if prev is None:
            raise
    # After the last decoded frame: targets still inside its display period show it; the source ends there.
    while prev is not None and n < n_out and start + n * step < (prev.time or 0.0) + src_step - EPS:
        yield prev
        n += 1
