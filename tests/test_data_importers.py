"""Importers on fixtures in the public datasets' own layouts (tests/fixtures/corpora): what the file lists is
what the manifest holds, a missing media file is one recorded failure, bad rows and entries are recorded with
their reason and the rest goes in."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from ivdata import pipeline
from ivdata.corpus import Corpus
from ivdata.instructions import check_turns
from ivdata.media.synth import make_video
from ivdata.stages.cut import CutConfig
from ivdata.stages.instructions import import_instructions
from ivdata.stages.split import SplitConfig

FIXTURES = Path(__file__).parent / "fixtures" / "corpora"


def video(path: Path, seconds: float, seed: int, audio: str | None = None) -> Path:
    return make_video(path, seconds=seconds, size=(160, 120), audio=audio, seed=seed, scenes=1)


def image(path: Path, seed: int, size=(96, 64)) -> Path:
    """A distinct picture (bands of seeded colours) in the format its suffix names."""
    rng = np.random.default_rng(seed)
    px = np.repeat(rng.integers(0, 256, (1, 6, 3), dtype=np.uint8), size[1], axis=0).repeat(size[0] // 6, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(path)
    return path


def cut_everything(c: Corpus, method: str) -> None:
    pipeline.probe(c)
    pipeline.images(c)
    pipeline.split(c, SplitConfig(method=method, min_s=0.5))
    pipeline.cut(c, CutConfig(mode="copy"))


def by_source_id(c: Corpus) -> dict[str, dict]:
    with c.manifest(read_only=True) as m:
        return {r["source_id"]: r for r in m.rows("SELECT * FROM videos")}


# --------------------------------------------------------------------------------------------- WebVid
def test_webvid_csv_ingests_every_row_with_its_caption_and_records_the_missing_file(tmp_path):
    rows = list(csv.DictReader(open(FIXTURES / "webvid_results_train.csv", newline="")))
    media = tmp_path / "webvid"
    present = {r["videoid"] for r in rows if r["videoid"] != "1026558173"}     # that one was never downloaded
    for i, r in enumerate(rows):
        if r["videoid"] in present:
            video(media / r["page_dir"] / f"{r['videoid']}.mp4", 2.5, seed=i)
    c = Corpus.init("webvid", home=tmp_path)
    stats = pipeline.ingest(c, [str(FIXTURES / "webvid_results_train.csv")], media_root=media)
    assert (stats.ok, stats.failed) == (len(present), 1)
    videos = by_source_id(c)
    assert set(videos) == {r["videoid"] for r in rows}
    assert all(v["source"] == "webvid" and v["media"] == "video" for v in videos.values())
    assert videos["1026558173"]["status"] == "failed" and "file not found" in videos["1026558173"]["error"]
    assert json.loads(videos["21179416"]["extra"])["duration"] == "PT00H00M11S"     # the list's fields, kept
    with c.manifest(read_only=True) as m:
        listed = {r["video_id"]: r for r in m.rows("SELECT * FROM source_captions")}
    assert len(listed) == len(rows)
    for r in rows:
        cap = listed[videos[r["videoid"]]["video_id"]]
        if r["name"]:
            assert (cap["text"], cap["kind"], cap["model"], cap["span"]) == (r["name"], "web", "webvid", "whole")
        else:                                   # a row with no caption: the video is in, the caption a failure
            assert cap["text"] is None and cap["error"] == "no caption in the list row"
            assert videos[r["videoid"]]["status"] == "ingested"
    assert json.loads(listed[videos["5629184"]["video_id"]]["extra"])["list_line"] == 3     # provenance

    cut_everything(c, "whole")
    with c.manifest(read_only=True) as m:
        got = dict(m.execute("SELECT v.source_id, k.text FROM captions k JOIN clips USING (clip_id) "
                             "JOIN videos v USING (video_id) WHERE k.kind = 'web' AND k.model = 'webvid' "
                             "AND k.prompt_hash = ''").fetchall())
    assert got == {r["videoid"]: r["name"] for r in rows if r["videoid"] in present and r["name"]}


# ------------------------------------------------------------------------------------------- InternVid
def test_internvid_jsonl_records_each_span_with_its_caption(tmp_path):
    rows = [json.loads(line) for line in open(FIXTURES / "internvid_10m_flt.jsonl")]
    media = tmp_path / "youtube"
    video(media / "-0aSe9nbBOc.mp4", 7.0, seed=1)
    video(media / "sub" / "k3J9xQ2fLmo.mp4", 3.0, seed=2)             # any folder: found by the id
    c = Corpus.init("internvid", home=tmp_path)
    res = CliRunner().invoke(app, ["data", "ingest", str(FIXTURES / "internvid_10m_flt.jsonl"), "-c",
                                   str(c.manifest_path), "--media-root", str(media)])
    assert res.exit_code == 0, res.output
    videos = by_source_id(c)
    assert set(videos) == {r["YoutubeID"] for r in rows}
    assert videos["Zq0rT7uVw1E"]["status"] == "failed" and "file not found" in videos["Zq0rT7uVw1E"]["error"]
    assert all(json.loads(v["extra"])["id_namespace"] == "youtube" for v in videos.values())
    with c.manifest(read_only=True) as m:
        spans = m.execute("SELECT count(*) FROM spans").fetchone()[0]
        listed = m.rows("SELECT * FROM source_captions ORDER BY start_s")
    assert spans == len(rows) == len(listed)
    first = next(r for r in listed if r["video_id"] == videos["-0aSe9nbBOc"]["video_id"])
    assert (first["start_s"], first["end_s"], first["model"]) == (0.6, 3.1, "internvid")
    assert json.loads(first["extra"])["UMT_Score"] == 0.412                       # per-span scores kept

    cut_everything(c, "spans")
    with c.manifest(read_only=True) as m:
        got = {(r["source_id"], r["start_s"], r["end_s"]): r["text"] for r in m.rows(
            "SELECT v.source_id, c.start_s, c.end_s, k.text FROM captions k JOIN clips c USING (clip_id) "
            "JOIN videos v USING (video_id) WHERE k.kind = 'web'")}
    assert got == {(r["YoutubeID"], s, e): r["Caption"] for r in rows if r["YoutubeID"] != "Zq0rT7uVw1E"
                   for s, e in [(_clock(r["Start_timestamp"]), _clock(r["End_timestamp"]))]}


def _clock(text: str) -> float:
    h, m, s = text.split(":")
    return round(int(h) * 3600 + int(m) * 60 + float(s), 3)


def test_internvid_list_without_media_root_is_refused_in_one_line(tmp_path):
    Corpus.init("iv", home=tmp_path)
    res = CliRunner().invoke(app, ["data", "ingest", str(FIXTURES / "internvid_10m_flt.jsonl"), "-c",
                                   str(tmp_path / "manifests" / "iv.duckdb")])
    assert res.exit_code == 2 and "--media-root" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------------ img2dataset
def test_img2dataset_parquet_downloads_images_with_captions_and_records_each_bad_one(tmp_path, http_dir):
    www, base = http_dir
    image(www / "a.jpg", 1)
    image(www / "b.png", 2)
    (www / "c_no_extension").write_bytes(image(tmp_path / "c.jpg", 3).read_bytes())   # told by its bytes
    image(www / "e.jpg", 5)
    (www / "truncated.jpg").write_bytes(image(tmp_path / "t.jpg", 6, size=(600, 400)).read_bytes()[:900])
    rows = [{"url": f"{base}/a.jpg", "caption": "bands of colour, first", "similarity": 0.31},
            {"url": f"{base}/b.png", "caption": "bands of colour, second", "similarity": 0.29},
            {"url": f"{base}/c_no_extension", "caption": "bands of colour, third", "similarity": 0.33},
            {"url": f"{base}/gone.jpg", "caption": "an image the server no longer has", "similarity": 0.30},
            {"url": f"{base}/truncated.jpg", "caption": "half an image", "similarity": 0.28},
            {"url": f"{base}/e.jpg", "caption": "", "similarity": 0.35}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "laion_part_00000.parquet")
    c = Corpus.init("img", home=tmp_path)
    pipeline.ingest(c, [str(tmp_path / "laion_part_00000.parquet")], source="laion", max_bytes=1 << 20)
    images = pipeline.images(c)
    assert (images.ok, images.failed) == (4, 1)
    with c.manifest(read_only=True) as m:
        media = {r["uri"].rsplit("/", 1)[1]: r for r in m.rows("SELECT * FROM videos")}
        clips = {r["clip_id"]: r for r in m.rows("SELECT * FROM clips")}
        attached = dict(m.execute("SELECT clip_id, text FROM captions WHERE kind = 'web'").fetchall())
        empty = m.rows("SELECT error FROM source_captions WHERE text IS NULL")
    assert len(media) == len(rows) and all(v["media"] == "image" for v in media.values())
    assert media["gone.jpg"]["status"] == "failed" and "HTTP 404" in media["gone.jpg"]["error"]
    assert media["truncated.jpg"]["status"] == "failed" and media["truncated.jpg"]["failed_stage"] == "images"
    assert "image" in media["truncated.jpg"]["error"]
    assert media["c_no_extension"]["status"] == "probed" and media["c_no_extension"]["container"] == "jpeg"
    assert {c["media"] for c in clips.values()} == {"image"} and len(clips) == 4
    assert all(Path(c["path"]).suffix == ".jpg" and c["num_frames"] == 1 for c in clips.values())
    assert media["b.png"]["container"] == "png"                        # stored as JPEG, the source recorded
    assert sorted(attached.values()) == sorted(r["caption"] for r in rows[:3])
    assert empty == [{"error": "no caption in the list row"}]


def test_image_folders_with_sidecars_and_lists_of_local_paths(tmp_path):
    shards = tmp_path / "img2dataset_out" / "00000"                   # img2dataset's "files" output
    for i in range(3):
        image(shards / f"00000000{i}.jpg", i)
        (shards / f"00000000{i}.txt").write_text(f"caption {i}\n")
        (shards / f"00000000{i}.json").write_text(json.dumps({"url": f"https://x/{i}.jpg", "key": f"00000000{i}",
                                                              "caption": f"caption {i}", "width": 96}))
    (shards / "000000003.jpg").write_bytes(b"not an image at all")   # unreadable: recorded, the rest goes on
    image(tmp_path / "listed" / "p.webp", 7)
    image(tmp_path / "listed" / "q.jpg", 8)
    with open(tmp_path / "listed" / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["path", "caption"], ["p.webp", "a webp picture"], ["q.jpg", "a jpeg picture"]])
    c = Corpus.init("folders", home=tmp_path)
    stats = pipeline.ingest(c, [str(tmp_path / "img2dataset_out"), str(tmp_path / "listed" / "images.csv")])
    assert stats.ok == 6 and "not_video_files" not in stats.extra          # sidecars are not reported as skipped
    images = pipeline.images(c)
    assert (images.ok, images.failed) == (5, 1)
    with c.manifest(read_only=True) as m:
        failed = m.rows("SELECT uri, error FROM videos WHERE status = 'failed'")
        captions = sorted(r[0] for r in m.execute("SELECT text FROM captions").fetchall())
        extra = json.loads(m.scalar("SELECT extra FROM videos WHERE uri LIKE '%000000001.jpg'"))
    assert len(failed) == 1 and failed[0]["uri"].endswith("000000003.jpg") and "not a readable image" in failed[0]["error"]
    assert captions == ["a jpeg picture", "a webp picture", "caption 0", "caption 1", "caption 2"]
    assert extra["key"] == "000000001" and extra["orig_url"] == "https://x/1.jpg"


# --------------------------------------------------------------------------------------- instructions
def llava_media(root: Path) -> None:
    image(root / "coco" / "train2017" / "000000033471.jpg", 1)
    image(root / "coco" / "train2017" / "000000052846.jpg", 2)
    video(root / "videos" / "v_Kq8M2xYw9aZ.mp4", 2.5, seed=3)


def test_llava_json_imports_image_and_video_conversations_and_records_each_bad_entry(tmp_path):
    entries = json.loads((FIXTURES / "llava_instruct.json").read_text())
    root = tmp_path / "llava_media"
    llava_media(root)
    c = Corpus.init("llava", home=tmp_path)
    res = CliRunner().invoke(app, ["data", "import-instructions", str(FIXTURES / "llava_instruct.json"),
                                   "--format", "llava", "--media-root", str(root), "--task", "conversation",
                                   "-c", str(c.manifest_path)])
    assert res.exit_code == 0, res.output
    with c.manifest(read_only=True) as m:
        rows = {r["entry_id"]: r for r in m.rows("SELECT * FROM conversations")}
    assert len(rows) == len(entries)
    failed = {k: r["error"] for k, r in rows.items() if r["status"] == "failed"}
    assert set(failed) == {"000000999999", "wrong_role", "empty_answer", "text_only_sharegpt"}
    assert failed["000000999999"].startswith("media file not found: coco/train2017/000000999999.jpg")
    assert "from 'user'" in failed["wrong_role"] and "empty value" in failed["empty_answer"]
    assert "text-only" in failed["text_only_sharegpt"]
    ok = {k: r for k, r in rows.items() if r["status"] == "ok"}
    for k, r in ok.items():
        source = next(e for e in entries if e["id"] == k)
        assert json.loads(r["turns"]) == source["conversations"]               # every turn, as given
        assert (r["dataset"], r["task"], r["format"]) == ("llava_instruct", "conversation", "llava")
    assert ok["000000033471"]["nturns"] == 4 and ok["v_Kq8M2xYw9aZ"]["media"] == "video"
    assert all(r["clip_id"] is None for r in ok.values())                        # no clips exist yet

    cut_everything(c, "spans")                      # the import recorded the video entry's span (the whole video)
    pipeline.shard(c, _conversation_set("all", "llava_set"))
    with c.manifest(read_only=True) as m:
        linked = dict(m.execute("SELECT entry_id, cl.media FROM conversations cv JOIN clips cl USING (clip_id)").fetchall())
        sampled = {r[0] for r in m.execute("SELECT key FROM samples WHERE shardset = 'llava_set'").fetchall()}
    assert linked == {"000000033471": "image", "000000052846": "image", "v_Kq8M2xYw9aZ": "video"}
    assert sampled == {r["conversation_id"] for r in ok.values()}


def _conversation_set(subset: str, name: str):
    from ivdata.stages.shard import ShardConfig
    return ShardConfig(subset=subset, shardset=name, unit="conversations")


def test_videochat2_it_json_keeps_every_qa_turn_and_records_each_bad_entry(tmp_path):
    entries = json.loads((FIXTURES / "videochat2_it_tgif.json").read_text())
    root = tmp_path / "videochat2"
    video(root / "tgif" / "tumblr_nk172bbdPI1u1lr18o1_250.mp4", 3.0, seed=1)
    video(root / "tgif" / "tumblr_nq3qsbT2Ra1tdmuv9o1_400.mp4", 2.5, seed=2)
    c = Corpus.init("vc2", home=tmp_path)
    _, stats = import_instructions(c, FIXTURES / "videochat2_it_tgif.json", "videochat2", root, task="vqa")
    assert (stats.ok, stats.failed) == (4, 2)
    with c.manifest(read_only=True) as m:
        rows = m.rows("SELECT * FROM conversations ORDER BY entry_index")
        spans = sorted(tuple(r) for r in m.execute("SELECT start_s, end_s FROM spans").fetchall())
    assert [r["entry_index"] for r in rows] == list(range(len(entries)))
    assert rows[4]["error"].startswith("media file not found: tgif/tumblr_missing_file_400.mp4")
    assert rows[5]["error"] == "QA item 0 has no answer `a`"
    assert json.loads(rows[1]["turns"]) == [
        {"from": "system", "value": "Describe the following video in detail."},
        {"from": "gpt", "value": "A bright square glides over a plain background that changes colour."}]
    assert [t["from"] for t in json.loads(rows[2]["turns"])] == ["system", "human", "gpt", "human", "gpt"]
    assert (rows[3]["start_s"], rows[3]["end_s"]) == (0.5, 2.5)
    assert spans == [(0.0, float("inf"))] * 2 + [(0.5, 2.5)]         # both videos whole, and one span

    cut_everything(c, "spans")
    pipeline.shard(c, _conversation_set("all", "vc2_set"))
    with c.manifest(read_only=True) as m:
        linked = {r[0]: (r[1], r[2]) for r in m.execute(
            "SELECT cv.entry_index, cl.start_s, cl.end_s FROM conversations cv JOIN clips cl USING (clip_id)").fetchall()}
    assert set(linked) == {0, 1, 2, 3} and linked[3] == (0.5, 2.5) and linked[0][0] == 0.0

    # imported again: nothing new, nothing twice
    _, again = import_instructions(c, FIXTURES / "videochat2_it_tgif.json", "videochat2", root, task="vqa")
    assert again.pending == 0
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM conversations") == len(entries)


@pytest.mark.parametrize("turns, reason", [
    ([], "has no turns"),
    ([{"from": "human", "value": "hi"}, {"from": "assistant", "value": "hello"}], "from 'assistant'"),
    ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}], "empty value"),
    ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}], "alternate"),
    ([{"from": "gpt", "value": "a"}], "opens with gpt"),
    ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "system", "value": "c"}],
     "system turn after the first"),
    ([{"from": "human", "value": "a"}], "does not end with a gpt turn"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}], "empty value"),
    (["just a string"], "not a {from, value} object"),
])
def test_malformed_turns_are_named_by_the_rule_they_break(turns, reason):
    assert reason in check_turns(turns)


def test_well_formed_turns_pass():
    assert check_turns([{"from": "system", "value": "Describe."}, {"from": "gpt", "value": "A cat."}]) is None
    assert check_turns([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},
                        {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]) is None


def test_an_instruction_file_that_is_not_a_list_is_refused_in_one_line(tmp_path):
    Corpus.init("bad", home=tmp_path)
    f = tmp_path / "not_a_list.json"
    f.write_text(json.dumps({"video": "x.mp4", "QA": []}))
    res = CliRunner().invoke(app, ["data", "import-instructions", str(f), "--format", "videochat2",
                                   "--media-root", str(tmp_path), "-c", str(tmp_path / "manifests" / "bad.duckdb")])
    assert res.exit_code == 2 and "JSON list of entries" in res.output and "Traceback" not in res.output
