"""Cut a span of a video into an mp4 clip, two ways.

copy      stream copy of whole GOPs: the clip starts at the last keyframe at or before the requested
          start and ends at the first keyframe at or after the requested end. No decoding, no quality
          loss, spans may be longer than asked.
reencode  frame-accurate: decode, keep frames whose timestamps fall in [start, end), optionally resample
          to a target fps and resize to a target short side, encode H.264 (libx264) + AAC.

Both write to a temporary name and rename, so a clip file is either complete or absent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ivdata.fsutil import temp_name

from ivdata.media.audio import decode_audio
from ivdata.media.probe import MediaError, _msg

EPS = 1e-6


@dataclass
class CutResult:
    start_s: float          # actual span in the source
    end_s: float
    num_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps else self.end_s - self.start_s



# --------------------------------------------------------------------------------------- copy mode
def cut_copy(src: str, out: Path, start: float, end: float) -> CutResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    try:
        with av.open(src) as inp:
            vin = inp.streams.video[0]
            ain = inp.streams.audio[0] if inp.streams.audio else None
            # Pass 1 over video packets (demux only): find the GOPs that cover [start, end).
            keyframes = []
            for pkt in inp.demux(vin):
                if pkt.size and pkt.is_keyframe and pkt.pts is not None:
                    keyframes.append(float(pkt.pts * vin.time_base))
            if not keyframes:
                raise MediaError("no keyframes")
            k0 = max([k for k in keyframes if k <= start + EPS], default=keyframes[0])
            later = [k for k in keyframes if k >= end - EPS]
            k1 = later[0] if later else float("inf")
            inp.seek(0)
            packets = _gop_packets(inp, vin, ain, k0, k1)
            rate = vin.average_rate or vin.guessed_rate
            size = (vin.codec_context.width, vin.codec_context.height)
        vpk = [p for p in packets if p.stream_kind == "video"]
        if not vpk:
            raise MediaError(f"no video packets in [{start:.3f}, {end:.3f})")
        nframes = len(vpk)
        t_end = max(p.end_time for p in vpk)
        _mux(src, tmp, packets, k0)
        os.replace(tmp, out)
        fps = float(rate) if rate else nframes / max(t_end - k0, EPS)
        return CutResult(k0, min(t_end, k1), nframes, fps, size[0], size[1],
                         any(p.stream_kind == "audio" for p in packets))
    except av.FFmpegError as e:
        raise MediaError(f"stream copy failed: {_msg(e)}") from e
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class _Pkt:
    stream_kind: str
    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    time_base: Fraction
    is_keyframe: bool

    @property
    def end_time(self) -> float:
        return float(((self.pts or 0) + self.duration) * self.time_base)


def _gop_packets(inp, vin, ain, k0: float, k1: float) -> list[_Pkt]:
    """Video packets in decode order from the keyframe at k0 up to the keyframe at k1; audio in [k0, k1)."""
    out, inside = [], False
    streams = [vin] + ([ain] if ain is not None else [])
    for pkt in inp.demux(*streams):
        if pkt.size == 0 or pkt.pts is None:
            continue
        t = float(pkt.pts * pkt.time_base)
        if pkt.stream.type == "video":
            if pkt.is_keyframe and abs(t - k0) < EPS:
                inside = True
            elif pkt.is_keyframe and t >= k1 - EPS:
                inside = False
                if ain is None:
                    break
                continue
            if inside:
                out.append(_Pkt("video", bytes(pkt), pkt.pts, pkt.dts, pkt.duration or 0, pkt.time_base, pkt.is_keyframe))
        elif k0 - EPS <= t < k1 - EPS:
            out.append(_Pkt("audio", bytes(pkt), pkt.pts, pkt.dts, pkt.duration or 0, pkt.time_base, pkt.is_keyframe))
    return out


def _mux(src: str, tmp: Path, packets: list[_Pkt], t0: float) -> None:
    with av.open(src) as inp, av.open(str(tmp), "w", format="mp4") as outc:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        vout = outc.add_stream_from_template(vin)
        aout = outc.add_stream_from_template(ain) if (ain is not None and any(p.stream_kind == "audio" for p in packets)) else None
        # Rebase so the first video packet's dts is 0 (pts of B-frame streams then start slightly above 0).
        first_v = next(p for p in packets if p.stream_kind == "video")
        v_off = first_v.dts if first_v.dts is not None else first_v.pts
        for p in packets:
            stream = vout if p.stream_kind == "video" else aout
            if stream is None:
                continue
            pkt = av.Packet(p.data)
            if p.stream_kind == "video":
                off = v_off
            else:
                off = int(round(t0 / p.time_base)) if p.time_base else 0
            pkt.pts = p.pts - off if p.pts is not None else None
            pkt.dts = (p.dts - off) if p.dts is not None else None
            pkt.duration = p.duration
            pkt.time_base = p.time_base
            pkt.is_keyframe = p.is_keyframe
            pkt.stream = stream
            outc.mux(pkt)


# ----------------------------------------------------------------------------------- reencode mode
def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if not short_side or min(width, height) <= short_side:
        return _even(width), _even(height)
    scale = short_side / min(width, height)
    return _even(width * scale), _even(height * scale)


def cut_reencode(src: str, out: Path, start: float, end: float, short_side: int | None = None,
                 fps: float | None = None, crf: int = 23, preset: str = "veryfast",
                 audio: bool = True) -> CutResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    try:
        with av.open(src) as inp, av.open(str(tmp), "w", format="mp4") as outc:
            vin = inp.streams.video[0]
            src_rate = Fraction(vin.average_rate or vin.guessed_rate or 25)
            out_rate = Fraction(fps).limit_denominator(1001) if fps else src_rate
            w, h = target_size(vin.codec_context.width, vin.codec_context.height, short_side)
            vout = outc.add_stream("libx264", rate=out_rate)
            vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
            vout.options = {"crf": str(crf), "preset": preset}
            vout.codec_context.time_base = 1 / out_rate
            ain = inp.streams.audio[0] if (audio and inp.streams.audio) else None
            aout = None
            if ain is not None:
                arate = ain.codec_context.sample_rate
                aout = outc.add_stream("aac", rate=arate)
                aout.layout = "stereo" if (ain.codec_context.channels or 1) >= 2 else "mono"
            n = 0
            first_time = None
            for frame in _frames_in_span(inp, vin, start, end, out_rate, src_rate):
                first_time = frame.time if first_time is None else first_time
                f = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
                f.pts, f.time_base = n, 1 / out_rate
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
                samples, arate = decode_audio(src, start, clip_end, rate=aout.codec_context.sample_rate,
                                              mono=aout.layout.name == "mono")
                if samples is not None and samples.size:
                    _encode_audio(outc, aout, samples, arate)
                    has_audio = True
        if not has_audio and aout is not None:
            # Declared an audio track but the span had no audio samples: rewrite without the empty track.
            return cut_reencode(src, out, start, end, short_side, fps, crf, preset, audio=False)
        os.replace(tmp, out)
        return CutResult(start, clip_end, n, float(out_rate), w, h, has_audio)
    except av.FFmpegError as e:
        raise MediaError(f"re-encode failed: {_msg(e)}") from e
    finally:
        tmp.unlink(missing_ok=True)


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


def _encode_audio(outc, aout, samples: np.ndarray, rate: int) -> None:
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    frame_size = aout.codec_context.frame_size or 1024
    pts = 0
    for i in range(0, samples.shape[1], frame_size):
        chunk = np.ascontiguousarray(samples[:, i:i + frame_size], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, pts
        pts += chunk.shape[1]
        for pkt in aout.encode(frame):
            outc.mux(pkt)
    for pkt in aout.encode(None):
        outc.mux(pkt)
