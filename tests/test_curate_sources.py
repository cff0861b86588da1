"""The five annotation formats parse from fixture files written in each dataset's real format."""
import json
from pathlib import Path

import pytest

from ivdata.curate.sources import (READERS, ResolveReport, SourceFormatError, VideoIndex, read_source,
                                   resolve_paths, source_key)

FIX = Path(__file__).parent / "fixtures" / "curate"
KEYS = {"source", "source_id", "start", "end", "split", "label", "path", "id_namespace",
        "annotation_file", "annotation_line"}


def _check_rows(rows, source, splits):
    assert rows
    for r in rows:
        assert KEYS <= set(r)
        assert r["source"] == source and r["source_id"] and r["path"] is None
        assert r["split"] in splits
        if r["start"] is not None:
            assert r["end"] > r["start"] >= 0


def test_kinetics_train_val_test():
    train = read_source("kinetics", FIX / "kinetics400_train.csv", source="k400")
    _check_rows(train, "k400", {"train"})
    assert len(train) == 40 and all(r["end"] - r["start"] == 10 and r["label"] for r in train)
    assert all(r["id_namespace"] == "youtube" and len(r["source_id"]) == 11 for r in train)
    val = read_source("kinetics", FIX / "kinetics400_validate.csv", source="k400")
    assert {r["split"] for r in val} == {"val"}       # Kinetics says "validate"
    test = read_source("kinetics", FIX / "kinetics400_test.csv", source="k400")
    assert {r["split"] for r in test} == {"test"} and all(r["label"] is None for r in test)
    first = train[0]
    assert first["annotation_line"] == 2 and first["annotation_file"].endswith("kinetics400_train.csv")


def test_ssv2_template_is_the_class_and_split_from_filename():
    train = read_source("ssv2", FIX / "something-something-v2-train.json")
    _check_rows(train, "ssv2", {"train"})
    classes = set(json.loads((FIX / "something-something-v2-labels.json").read_text()))
    assert {r["label"] for r in train} <= classes
    assert all("[" not in r["label"] and r["ssv2_caption"] for r in train)
    assert {r["split"] for r in read_source("ssv2", FIX / "something-something-v2-validation.json")} == {"val"}
    test = read_source("ssv2", FIX / "something-something-v2-test.json")
    assert {r["split"] for r in test} == {"test"} and all(r["label"] is None for r in test)


def test_mit_relative_path_is_the_id():
    train = read_source("mit", FIX / "trainingSet.csv")
    _check_rows(train, "mit", {"train"})
    assert len(train) == 30
    for r in train:
        assert r["source_id"].split("/")[0] == r["label"] and r["source_id"].endswith(".mp4")
        assert r["num_agree"] >= 1
    assert {r["split"] for r in read_source("mit", FIX / "validationSet.csv")} == {"val"}


def test_activitynet_one_row_per_segment():
    rows = read_source("activitynet", FIX / "activity_net.v1-3.min.json")
    _check_rows(rows, "anet", {"train", "val", "test"})
    db = json.loads((FIX / "activity_net.v1-3.min.json").read_text())["database"]
    nseg = sum(max(1, len(v["annotations"])) for v in db.values())
    assert len(rows) == nseg
    test = [r for r in rows if r["split"] == "test"]
    assert test and all(r["start"] is None and r["label"] is None for r in test)
    for r in rows:
        if r["start"] is not None:
            assert r["end"] <= db[r["source_id"]]["duration"]


def test_hacs_clips_csv_keeps_polarity():
    rows = read_source("hacs", FIX / "HACS_clips_v1.1.csv")
    _check_rows(rows, "hacs", {"train", "val"})
    assert {r["hacs_positive"] for r in rows} == {True, False}
    assert all(abs(r["end"] - r["start"] - 2.0) < 1e-6 for r in rows)


def test_same_youtube_video_shares_a_key_across_datasets():
    planted = json.loads((FIX / "planted.json").read_text())
    anet = {source_key(r) for r in read_source("activitynet", FIX / "activity_net.v1-3.min.json")}
    hacs = {source_key(r) for r in read_source("hacs", FIX / "HACS_clips_v1.1.csv")}
    assert anet & hacs == {f"youtube:{planted['shared_youtube_id']}"}


def test_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "k.csv"
    bad.write_text("label,youtube_id,start\nx,abc,1\n")
    with pytest.raises(SourceFormatError, match="not a Kinetics CSV"):
        read_source("kinetics", bad)
    bad.write_text("label,youtube_id,time_start,time_end,split\nx,abc,1,zz,train\n")
    with pytest.raises(SourceFormatError, match=r"k.csv:2: time_end 'zz'"):
        read_source("kinetics", bad)
    bad.write_text("label,youtube_id,time_start,time_end,split\nx,abc,1,5,holdout\n")
    with pytest.raises(SourceFormatError, match="unknown split 'holdout'"):
        read_source("kinetics", bad)
    j = tmp_path / "anet.json"
    j.write_text(json.dumps({"database": {"a": {"subset": "training", "annotations": [{"segment": [3]}]}}}))
    with pytest.raises(SourceFormatError, match="not \\[start, end\\]"):
        read_source("activitynet", j)
    with pytest.raises(SourceFormatError, match="unknown annotation format"):
        read_source("ucf", bad)
    with pytest.raises(FileNotFoundError):
        read_source("mit", tmp_path / "nope.csv")
    assert set(READERS) >= {"kinetics", "ssv2", "mit", "activitynet", "hacs"}


def test_resolve_against_common_file_layouts(tmp_path):
    k = read_source("kinetics", FIX / "kinetics400_train.csv")[:3]
    s = read_source("ssv2", FIX / "something-something-v2-train.json")[:2]
    m = read_source("mit", FIX / "trainingSet.csv")[:2]
    a = read_source("activitynet", FIX / "activity_net.v1-3.min.json")[:1]
    vd = tmp_path / "videos"
    # Kinetics: trimmed {id}_{start:06d}_{end:06d}.mp4 under a class folder, and a whole {id}.mp4
    (vd / "train" / "x").mkdir(parents=True)
    (vd / "train" / "x" / f"{k[0]['source_id']}_{int(k[0]['start']):06d}_{int(k[0]['end']):06d}.mp4").touch()
    (vd / f"{k[1]['source_id']}.mp4").touch()
    (vd / f"{s[0]['source_id']}.webm").touch()
    (vd / Path(m[0]["source_id"]).parent).mkdir(parents=True)
    (vd / m[0]["source_id"]).touch()
    (vd / f"v_{a[0]['source_id']}.mp4").touch()
    rows = k + s + m + a
    rep = resolve_paths(rows, vd)
    found = [r for r in rows if r["path"]]
    assert {r["source_id"] for r in found} == {k[0]["source_id"], k[1]["source_id"], s[0]["source_id"],
                                                m[0]["source_id"], a[0]["source_id"]}
    assert all(Path(r["path"]).is_file() for r in found)
    summary = rep.summary()
    assert summary["k400"] == {"found": 2, "missing": 1, "missing_examples": [k[2]["source_id"]]}
    assert summary["ssv2"]["missing"] == 1 and summary["mit"]["missing"] == 1


def test_ambiguous_stem_is_not_guessed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "123.webm").touch()
    (tmp_path / "b" / "123.mp4").touch()
    idx = VideoIndex(tmp_path)
    assert idx.find(["123"]) is None and "123" in idx.ambiguous
    rep = resolve_paths([{"source": "ssv2", "source_id": "123", "start": None, "end": None}], idx, ResolveReport())
    assert rep.missing["ssv2"] == 1


def test_hacs_segments_json_and_video_lists(tmp_path):
    """HACS Segments ships in the ActivityNet layout; extra videos come as CSV or JSON Lines lists."""
    seg = tmp_path / "HACS_segments_v1.1.1.json"
    seg.write_text((FIX / "activity_net.v1-3.min.json").read_text())
    rows = read_source("hacs", seg)
    _check_rows(rows, "hacs", {"train", "val", "test"})
    assert all("youtube_url" in r and "url" not in r for r in rows)
    jl = tmp_path / "extra.jsonl"
    jl.write_text('{"youtube_id": "abcdefghijk", "start": 3, "end": 9, "url": "https://example.org/x"}\n'
                  '{"video_id": "clip-7"}\n')
    rows = read_source("videolist", jl, source="yt_extra")
    assert [(r["source_id"], r["id_namespace"], r["start"], r["split"]) for r in rows] == [
        ("abcdefghijk", "youtube", 3.0, "train"), ("clip-7", "yt_extra", None, "train")]
    assert rows[0]["orig_url"] == "https://example.org/x" and "url" not in rows[0]
    jl.write_text('{"name": "no id"}\n')
    with pytest.raises(SourceFormatError, match="needs one of"):
        read_source("videolist", jl)
