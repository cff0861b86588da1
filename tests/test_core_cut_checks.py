"""What the cut stage checks before a clip counts: the source is still the file ingest hashed, the clip
holds the span asked for, the store keeps no file that no row names, one corpus keeps one set of settings."""
from __future__ import annotations

import hashlib

import numpy as np
from typer.testing import CliRunner

from cli import app
from ivdata import pipeline
from ivdata.media.synth import make_video
from ivdata.stages.cut import CutConfig, CutStage
from ivdata.stages.split import SplitConfig


def _split_corpus(tmp_path, name: str, videos: list):
    c = pipeline.open_or_init(name, tmp_path)
    pipeline.ingest(c, [str(v) for v in videos])
    pipeline.probe(c)
    pipeline.split(c, SplitConfig(method="whole"))
    return c


def _clips(c) -> list[dict]:
    with c.manifest(read_only=True) as m:
        return m.rows("SELECT c.*, v.uri FROM clips c JOIN videos v USING (video_id) ORDER BY v.uri")


def _store_files(c) -> set[str]:
    return {str(p) for p in c.clips_dir.rglob("*") if p.is_file() and "incoming" not in p.parts}


def test_a_source_replaced_after_ingest_is_not_cut(tmp_path):
    same_size = make_video(tmp_path / "in" / "same_size.mp4", seconds=3, audio=None, seed=1)
    grown = make_video(tmp_path / "in" / "grown.mp4", seconds=3, audio=None, seed=2)
    c = _split_corpus(tmp_path, "changed", [same_size, grown])
    original = same_size.read_bytes()
    edited = bytearray(original)
    mid = len(edited) // 2
    edited[mid:mid + 64] = bytes(255 - b for b in edited[mid:mid + 64])     # same size, other bytes
    same_size.write_bytes(bytes(edited))
    with open(grown, "ab") as f:
        f.write(b"\0" * 100)
    pipeline.cut(c, CutConfig(mode="reencode"))
    grown_clip, same_clip = _clips(c)
    for clip, evidence in ((same_clip, "sha256"), (grown_clip, "bytes recorded")):
        assert clip["status"] == "failed" and "source changed since ingest" in clip["error"], clip
        assert evidence in clip["error"] and clip["path"] is None
    assert not _store_files(c)
    same_size.write_bytes(original)             # restored: another mtime, the recorded bytes
    pipeline.cut(c, CutConfig(mode="reencode"), retry_failed=True)
    grown_clip, same_clip = _clips(c)
    assert same_clip["status"] == "ok" and grown_clip["status"] == "failed"
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT sha256 FROM videos WHERE video_id = ?", [same_clip["video_id"]]) == \
            hashlib.sha256(original).hexdigest()


def test_a_clip_short_of_its_span_is_failed_with_both_counts(tmp_path):
    """Bytes overwritten mid-file: the container and its packets are intact (probe passes, 132 frames),
    but decoding stops early, so a re-encode writes a fraction of the span."""
    src = make_video(tmp_path / "in" / "damaged.mp4", seconds=5.28, fps=25, audio=None, size=(320, 240), seed=3)
    data = bytearray(src.read_bytes())
    at = len(data) // 4
    data[at:at + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    src.write_bytes(bytes(data))
    c = _split_corpus(tmp_path, "short", [src])
    with c.manifest(read_only=True) as m:
        assert m.rows("SELECT status, num_frames FROM videos") == [{"status": "probed", "num_frames": 132}]
    pipeline.cut(c, CutConfig(mode="reencode"))
    (clip,) = _clips(c)
    assert clip["status"] == "failed" and "of the 132 frames (5.28 s) asked for" in clip["error"], clip
    got = int(clip["error"].split("clip holds ")[1].split(" frames")[0])
    assert got < 0.95 * 132
    assert not _store_files(c)


def test_rerun_removes_store_files_a_killed_cut_left_unrecorded(tmp_path):
    videos = [make_video(tmp_path / "in" / f"v{i}.mp4", seconds=2.5, audio="tone" if i else None, seed=i)
              for i in range(2)]
    c = _split_corpus(tmp_path, "orphans", videos)
    # A worker placed its clips in the store, then the run was killed before their rows committed. The
    # rerun's re-encode gives other bytes (here: another crf; in life, encoder nondeterminism), hence
    # other content addresses: the killed run's files would stay forever.
    killed = CutStage(c, CutConfig(mode="reencode", crf=40))
    with c.manifest() as m:
        items = killed.pending(m, False)
    for item in items:
        killed.work(item)
    leftovers = _store_files(c)
    assert len(leftovers) == 3                  # two mp4s and the flac of the one with audio
    pipeline.cut(c, CutConfig(mode="reencode"))
    referenced = {p for r in _clips(c) for p in (r["path"], r["audio_path"]) if p}
    assert {r["status"] for r in _clips(c)} == {"ok"}
    assert _store_files(c) == referenced and not (leftovers & referenced)
    assert not list((c.clips_dir / "incoming").iterdir())


def test_cut_with_other_settings_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("IVKIT_HOME", str(tmp_path))
    runner = CliRunner()
    first = make_video(tmp_path / "in1" / "a.mp4", seconds=2.5, audio=None, size=(192, 144), seed=1)
    c = _split_corpus(tmp_path, "mixed", [first])
    res = runner.invoke(app, ["data", "cut", "-c", "mixed", "--mode", "reencode", "--short-side", "96"])
    assert res.exit_code == 0, res.output
    later = make_video(tmp_path / "in2" / "b.mp4", seconds=2.5, audio=None, size=(192, 144), seed=2)
    pipeline.ingest(c, [str(later)])
    pipeline.probe(c)
    pipeline.split(c, SplitConfig(method="whole"))
    with c.manifest(read_only=True) as m:
        runs = m.scalar("SELECT count(*) FROM runs")
    res = runner.invoke(app, ["data", "cut", "-c", "mixed", "--mode", "reencode", "--short-side", "64"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "short_side=96 (now 64)" in res.output, res.output
    assert "--allow-mixed-options" in res.output
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM runs") == runs          # refused before anything was recorded
    assert [r["status"] for r in _clips(c)] == ["ok", "pending"]
    res = runner.invoke(app, ["data", "cut", "-c", "mixed", "--mode", "reencode", "--short-side", "64",
                              "--allow-mixed-options"])
    assert res.exit_code == 0, res.output
    assert [(r["status"], r["height"]) for r in _clips(c)] == [("ok", 96), ("ok", 64)]


def test_a_clip_failed_after_its_mp4_was_placed_leaves_no_store_file(tmp_path, monkeypatch):
    """The clip's FLAC fails after its mp4 was renamed into the store: the clip is recorded failed, and the
    next cut run (even one with nothing to cut) removes the mp4 that no row names."""
    import ivdata.stages.cut as cut_stage
    from ivdata.media.probe import MediaError

    video = make_video(tmp_path / "in" / "v.mp4", seconds=3, audio="tone", seed=1)
    c = _split_corpus(tmp_path, "placed", [video])

    def flac_fails(*args, **kwargs):
        raise MediaError("the FLAC encoder failed")
    monkeypatch.setattr(cut_stage, "write_flac", flac_fails)
    pipeline.cut(c, CutConfig(mode="copy"))                 # inline: the patched encoder runs
    (clip,) = _clips(c)
    assert clip["status"] == "failed" and clip["error"] == "the FLAC encoder failed" and clip["path"] is None
    assert len(_store_files(c)) == 1                         # the placed mp4
    monkeypatch.undo()
    pipeline.cut(c, CutConfig(mode="copy"))                 # the failed clip is not retried ...
    assert not _store_files(c)                               # ... but what it left in the store is gone
    pipeline.cut(c, CutConfig(mode="copy"), retry_failed=True)
    (clip,) = _clips(c)
    assert clip["status"] == "ok" and _store_files(c) == {clip["path"], clip["audio_path"]}
