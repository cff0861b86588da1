"""Shards load with stock webdataset and wids (no ivkit import) and match the manifest exactly."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap


from ivdata.media.probe import count_frames_decoded
from ivdata.shards.verify import verify

# Run in a fresh interpreter that never imports ivkit: proves the format needs no project code.
STOCK_READER = textwrap.dedent("""
    import io, json, sys
    import av, webdataset as wds, wids
    shardlist, index = sys.argv[1], sys.argv[2]
    out = {}
    urls = [l.strip() for l in open(shardlist) if l.strip()]
    for s in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(s["json"])
        with av.open(io.BytesIO(s["mp4"])) as c:
            frames = sum(1 for _ in c.decode(video=0))
        out[s["__key__"]] = {"frames": frames, "num_frames": meta["num_frames"], "has_flac": "flac" in s,
                             "has_audio": meta["has_audio"], "members": sorted(k for k in s if not k.startswith("__"))}
    ds = wids.ShardListDataset(index, localname=lambda u: u)
    keys = [ds[i]["__key__"] for i in range(len(ds))]
    assert "ivdata" not in sys.modules and "ivtrain" not in sys.modules
    print(json.dumps({"wds": out, "wids_keys": keys}))
""")


def test_shards_load_with_stock_webdataset_and_wids(built_corpus, tmp_path):
    script = tmp_path / "reader.py"
    script.write_text(STOCK_READER)
    shardlist = built_corpus.shard_dir("all") / "all.txt"
    res = subprocess.run([sys.executable, str(script), str(shardlist), str(built_corpus.wids_index("all"))],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    with built_corpus.manifest(read_only=True) as m:
        clips = {r["clip_id"]: r for r in m.rows("SELECT * FROM clips WHERE status = 'ok'")}
    assert set(got["wds"]) == set(clips) == set(got["wids_keys"])
    for key, s in got["wds"].items():
        assert s["frames"] == s["num_frames"] == clips[key]["num_frames"], key
        # every video sample has a FLAC member (one member set per shard set); a clip without audio carries
        # a silent placeholder, marked has_audio false in its json
        assert s["has_flac"] and s["has_audio"] == bool(clips[key]["has_audio"])
        assert {"mp4", "json"} <= set(s["members"])


def test_every_clip_file_decodes_to_recorded_frames_and_duration(built_corpus):
    with built_corpus.manifest(read_only=True) as m:
        clips = m.rows("SELECT path, num_frames, duration_s, fps FROM clips WHERE status = 'ok'")
    assert len(clips) >= 8
    for c in clips:
        n, dur = count_frames_decoded(c["path"])
        assert n == c["num_frames"]
        assert abs(dur - c["duration_s"]) <= 1.0 / c["fps"] + 1e-6


def test_verify_passes_then_catches_tampering(built_corpus, tmp_path):
    problems, counts = verify(built_corpus)
    assert problems == [] and counts["samples"] >= 8 and counts["shards"] >= 3
    # A stray unrecorded shard and a modified shard are both reported.
    d = built_corpus.shard_dir("all")
    stray = d / "all-999999.tar"
    stray.write_bytes(b"")
    first = sorted(d.glob("all-0*.tar"))[0]
    original = first.read_bytes()
    try:
        mid = len(original) // 2  # inside a member (the tail is zero padding)
        first.write_bytes(original[:mid] + bytes([original[mid] ^ 0xFF]) + original[mid + 1:])
        problems, _ = verify(built_corpus)
        assert any("not in the manifest" in p for p in problems)
        assert any(first.name in p for p in problems)
    finally:
        stray.unlink()
        first.write_bytes(original)
    assert verify(built_corpus)[0] == []


def test_json_member_carries_clip_facts_and_no_labels_by_default(built_corpus):
    import webdataset as wds
    urls = [str(p) for p in built_corpus.shard_list("all")]
    s = next(iter(wds.WebDataset(urls, shardshuffle=False)))
    meta = json.loads(s["json"])
    for k in ("clip_id", "video_id", "source", "start_s", "end_s", "duration_s", "fps", "num_frames", "width",
              "height", "has_audio", "captions", "scores"):
        assert k in meta
    assert "label" not in meta
    assert meta["clip_id"] == s["__key__"]
    assert min(meta["width"], meta["height"]) <= 160  # re-encoded to short side 160
