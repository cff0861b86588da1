"""A corpus of bad inputs: the run completes, every bad item is recorded with its reason, every good clip is there."""
from __future__ import annotations

import av

from ivdata.media.synth import make_audio_only, make_video
from ivdata.pipeline import build_corpus
from ivdata.shards.verify import verify


def _make_bad_corpus(d):
    d.mkdir()
    (d / "zero_bytes.mp4").write_bytes(b"")
    whole = make_video(d / "whole.tmp", seconds=3, audio="tone", seed=3).read_bytes()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) // 2])        # moov atom at the end is lost
    fs = d / "faststart_src.mp4"
    make_video(fs, seconds=3, audio=None, seed=4)
    with av.open(str(fs)) as inp, av.open(str(d / "truncated_faststart.mp4.tmp"), "w", format="mp4",
                                          options={"movflags": "faststart"}) as out:
        s = out.add_stream_from_template(inp.streams.video[0])
        for p in inp.demux(inp.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                out.mux(p)
    data = (d / "truncated_faststart.mp4.tmp").read_bytes()
    (d / "truncated_faststart.mp4").write_bytes(data[: int(len(data) * 0.6)])  # header whole, frames cut off
    (d / "truncated_faststart.mp4.tmp").unlink()
    fs.unlink()
    (d / "whole.tmp").unlink()
    (d / "not_a_video.mp4").write_text("this is a text file, not a video\n")
    make_video(d / "no_audio.mp4", seconds=3, audio=None, seed=5)
    make_audio_only(d / "audio_only.mp4", seconds=3)
    make_video(d / "name with spaces é 動画.mp4", seconds=3, audio="tone", seed=6)
    make_video(d / "one_frame.mp4", frames=1, audio=None, seed=7)
    make_video(d / "silent_track.mp4", seconds=2.5, audio="silence", seed=8)


EXPECTED_FAILURES = {
    "zero_bytes.mp4": ("probe", "empty file"),
    "truncated.mp4": ("probe", "not a readable media container"),
    "truncated_faststart.mp4": ("probe", "truncated"),
    "not_a_video.mp4": ("probe", "not a readable media container"),
    "audio_only.mp4": ("probe", "audio-only"),
}
GOOD = {"no_audio.mp4", "name with spaces é 動画.mp4", "silent_track.mp4"}


def test_bad_inputs_are_recorded_and_good_clips_survive(tmp_path):
    _make_bad_corpus(tmp_path / "in")
    c = build_corpus("bad", [tmp_path / "in"], home=tmp_path, split="whole", cut="copy", workers=2)
    with c.manifest(read_only=True) as m:
        videos = {r["uri"].rsplit("/", 1)[-1]: r for r in m.rows("SELECT * FROM videos")}
        splits = {r["video_id"]: r for r in m.rows("SELECT * FROM splits")}
        clips = m.rows("SELECT c.*, v.uri FROM clips c JOIN videos v USING (video_id)")
        shard_keys = {r[0] for r in m.execute("SELECT key FROM samples").fetchall()}
    assert set(videos) == set(EXPECTED_FAILURES) | GOOD | {"one_frame.mp4"}
    for name, (stage, reason) in EXPECTED_FAILURES.items():
        v = videos[name]
        assert (v["status"], v["failed_stage"]) == ("failed", stage), name
        assert reason in v["error"], (name, v["error"])
    # The 1-frame video probes fine but is too short for any clip: recorded, with the reason.
    one = videos["one_frame.mp4"]
    assert one["status"] == "probed" and one["num_frames"] == 1
    assert splits[one["video_id"]]["status"] == "skipped" and "shorter than" in splits[one["video_id"]]["error"]
    # Every good video has its clip, decoded and sharded; audio facts are right.
    good = {c["uri"].rsplit("/", 1)[-1]: c for c in clips}
    assert set(good) == GOOD
    assert all(c["status"] == "ok" for c in good.values())
    assert good["no_audio.mp4"]["has_audio"] is False and good["no_audio.mp4"]["audio_path"] is None
    assert good["silent_track.mp4"]["has_audio"] is True
    assert {c["clip_id"] for c in good.values()} == shard_keys
    assert verify(c)[0] == []


def test_rerun_is_a_no_op_and_retry_failed_retries(tmp_path):
    from ivdata import pipeline
    d = tmp_path / "in"
    d.mkdir()
    broken = d / "later_fixed.mp4"
    broken.write_bytes(b"")
    make_video(d / "ok.mp4", seconds=2.5, audio=None)
    c = build_corpus("rr", [d], home=tmp_path, split="whole", cut="copy")
    with c.manifest(read_only=True) as m:
        before = m.rows("SELECT clip_id, sha256 FROM clips ORDER BY 1")
    build_corpus("rr", [d], home=tmp_path, split="whole", cut="copy")
    with c.manifest(read_only=True) as m:
        assert m.rows("SELECT clip_id, sha256 FROM clips ORDER BY 1") == before
        assert m.scalar("SELECT count(*) FROM samples") == 1
        last = m.rows("SELECT stage, counts FROM runs ORDER BY run_id DESC LIMIT 5")
    assert all('"pending": 0' in r["counts"] for r in last if r["stage"] != "ingest")
    make_video(broken, seconds=2.5, audio=None, seed=9)        # the file is fixed on disk
    pipeline.probe(c)                                           # recorded failures are not retried by default
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM videos WHERE status = 'failed'") == 1
    pipeline.probe(c, retry_failed=True)
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM videos WHERE status = 'failed'") == 0
