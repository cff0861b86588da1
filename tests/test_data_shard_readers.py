"""Every kind of shard set (video with and without audio, captioned video, image-text, instruction) reads with
stock webdataset, wids and Hugging Face `datasets` and decodes sample by sample; one SQL query and one subset
span videos and images."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ivdata import pipeline
from ivdata.corpus import Corpus
from ivdata.shards.verify import verify
from ivdata.stages.cut import CutConfig
from ivdata.stages.instructions import import_instructions
from ivdata.stages.shard import ShardConfig
from ivdata.stages.split import SplitConfig
from test_data_importers import FIXTURES, image, llava_media, video

READER = Path(__file__).parent / "shard_set_reader.py"
LONG = 6        # words: "a caption longer than LONG words"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """Videos with a tone, with a silent track and with no audio; WebVid rows with captions; images with sidecar
    captions; LLaVA (image and video) and VideoChat2-IT conversations; cut and sharded into one set of each kind."""
    tmp = tmp_path_factory.mktemp("kinds")
    video(tmp / "samples" / "tone.mp4", 2.5, seed=1, audio="tone")
    video(tmp / "samples" / "quiet.mp4", 2.0, seed=2, audio="silence")
    video(tmp / "samples" / "mute.mp4", 2.2, seed=3, audio=None)
    webvid = tmp / "webvid"
    for i, r in enumerate(csv.DictReader(open(FIXTURES / "webvid_results_train.csv", newline=""))):
        video(webvid / r["page_dir"] / f"{r['videoid']}.mp4", 2.0 + 0.1 * i, seed=10 + i)
    captions = ["a picture of six coloured vertical bands side by side", "colour bands",
                "six bands of colour, each a different shade, in a small picture", "stripes"]
    for i, text in enumerate(captions):
        image(tmp / "images" / f"im{i}.{'png' if i == 2 else 'jpg'}", 20 + i)
        (tmp / "images" / f"im{i}.txt").write_text(text)
    llava_media(tmp / "llava")
    video(tmp / "vc2" / "tgif" / "tumblr_nk172bbdPI1u1lr18o1_250.mp4", 3.0, seed=30)
    video(tmp / "vc2" / "tgif" / "tumblr_nq3qsbT2Ra1tdmuv9o1_400.mp4", 2.5, seed=31)

    c = Corpus.init("kinds", home=tmp)
    import_instructions(c, FIXTURES / "llava_instruct.json", "llava", tmp / "llava")
    import_instructions(c, FIXTURES / "videochat2_it_tgif.json", "videochat2", tmp / "vc2")
    pipeline.probe(c)
    pipeline.split(c, SplitConfig(method="spans", min_s=0.5))        # the conversations' spans (whole videos, one span)
    pipeline.ingest(c, [str(tmp / "samples")], source="samples")    # split handles a video once: these come after
    pipeline.ingest(c, [str(FIXTURES / "webvid_results_train.csv")], media_root=webvid)
    pipeline.ingest(c, [str(tmp / "images")], source="frames")
    pipeline.probe(c)
    pipeline.images(c)
    pipeline.split(c, SplitConfig(method="whole", min_s=0.5))
    pipeline.cut(c, CutConfig(mode="reencode", short_side=96))
    with c.manifest() as m:
        m.select_subset("samples", where="source = 'samples'")
        m.select_subset("webvid", where="source = 'webvid'")
        m.select_subset("frames", where="media = 'image' AND source = 'frames'")
        m.select_subset("videos", where="media = 'video'")
        m.select_subset("llava_images", where="media = 'image' AND source = 'llava_instruct'")
        m.select_subset("long_captions", sql=LONG_CAPTIONS_SQL)
    for cfg in (ShardConfig(subset="samples", shardset="video", maxcount=2),
                ShardConfig(subset="samples", shardset="video_no_flac", flac=False, maxcount=2),
                ShardConfig(subset="webvid", shardset="captioned", txt_kinds=("web",), maxcount=2),
                ShardConfig(subset="frames", shardset="images", txt_kinds=("web",), maxcount=2),
                ShardConfig(subset="videos", shardset="instructions", unit="conversations", maxcount=3),
                ShardConfig(subset="llava_images", shardset="image_instructions", unit="conversations"),
                ShardConfig(subset="long_captions", shardset="mixed", maxcount=2)):
        pipeline.shard(c, cfg)
    return c


# media of either kind with a caption longer than LONG words: one query over clips and images alike
LONG_CAPTIONS_SQL = f"""SELECT DISTINCT clip_id FROM clip_info JOIN captions USING (clip_id)
                        WHERE status = 'ok' AND len(string_split(trim(text), ' ')) > {LONG}"""

SETS = ("video", "video_no_flac", "captioned", "images", "instructions", "image_instructions", "mixed")


def read_stock(c: Corpus, tmp_path: Path, sets: tuple[str, ...], hf: bool, hf_media: bool = False) -> dict:
    spec = {s: {"shards": [str(p) for p in c.shard_list(s)], "index": str(c.wids_index(s)),
                "hf": hf and s != "mixed"} for s in sets}
    (tmp_path / "sets.json").write_text(json.dumps(spec))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    res = subprocess.run([sys.executable, str(READER), str(tmp_path / "sets.json")] + (["--hf-media"] if hf_media else []),
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ivkit_modules"] == []
    return out["sets"]


def manifest_view(c: Corpus) -> dict:
    with c.manifest(read_only=True) as m:
        return {"clips": {r["clip_id"]: r for r in m.rows("SELECT * FROM clip_info WHERE status = 'ok'")},
                "conversations": {r["conversation_id"]: r for r in m.rows("SELECT * FROM conversations")},
                "samples": {(r["shardset"], r["key"]): r for r in m.rows("SELECT * FROM samples")}}


def check_sample(set_name: str, key: str, got: dict, view: dict, reader: str) -> None:
    """One sample as a reader saw it against the manifest: members, json facts, decoded media."""
    sample = view["samples"][(set_name, key)]
    assert got["members"] == sorted(n.split(".", 1)[1] for n in sample["members"]), (reader, key)
    meta = got["json"]
    conv = view["conversations"].get(key)
    clip = view["clips"][conv["clip_id"] if conv else key]
    assert meta["clip_id"] == clip["clip_id"] and meta["media"] == clip["media"], (reader, key)
    if reader != "hf":      # (datasets shows a key some other sample has as None)
        assert "null" not in json.dumps(meta)              # no null: a schema-inferring reader needs typed values
    if clip["media"] == "video":
        if "frames" in got:
            assert got["frames"] == meta["num_frames"] == clip["num_frames"], (reader, key)
        assert meta["has_audio"] == bool(clip["has_audio"] and clip["audio_path"])
        if "flac_samples" in got:
            assert abs(got["flac_samples"] - clip["duration_s"] * 16000) <= 1600, (reader, key)
            if not meta["has_audio"]:
                assert got["flac_peak"] == 0.0, (reader, key)      # the placeholder is silence
            elif clip["source_id"] is None and "tone" in clip["uri"]:
                assert got["flac_peak"] > 0.1, (reader, key)
    else:
        assert got["image_size"] == [clip["width"], clip["height"]], (reader, key)
    if conv:
        assert got["turns"] == json.loads(conv["turns"]) and meta["conversation_id"] == key
        assert meta["dataset"] == conv["dataset"]


def test_every_kind_of_shard_set_reads_with_webdataset_wids_and_hf_datasets(corpus, tmp_path):
    view = manifest_view(corpus)
    got = read_stock(corpus, tmp_path, SETS, hf=True)
    for name in SETS:
        keys = {k for s, k in view["samples"] if s == name}
        assert keys, name
        for reader in ("wds", "wids", "hf"):
            if reader not in got[name]:
                continue
            assert set(got[name][reader]) == keys, (name, reader)
            for key, sample in got[name][reader].items():
                check_sample(name, key, sample, view, reader)
    # what each kind carries
    audio = {view["clips"][k]["uri"].rsplit("/", 1)[1]: s for k, s in got["video"]["wds"].items()}
    assert audio["tone.mp4"]["json"]["has_audio"] and not audio["mute.mp4"]["json"]["has_audio"]
    assert all("flac" in s["members"] for s in got["video"]["wds"].values())
    assert all("flac" not in s["members"] for s in got["video_no_flac"]["wds"].values())
    webvid = {r["videoid"]: r["name"] for r in csv.DictReader(open(FIXTURES / "webvid_results_train.csv", newline=""))}
    for key, s in got["captioned"]["hf"].items():
        sid = view["clips"][key]["source_id"]
        assert s["web.txt"] == webvid[sid] == s["json"]["captions"]["web"]["text"]   # '' for the row without one
        if webvid[sid]:
            assert s["json"]["captions"]["web"]["model"] == "webvid"
    assert {s["json"]["captions"]["web"]["text"] for s in got["images"]["hf"].values()} >= {"stripes", "colour bands"}
    assert {tuple(s["members"]) for s in got["instructions"]["wds"].values()} == {
        ("conversations.json", "flac", "json", "mp4")}
    assert {tuple(s["members"]) for s in got["image_instructions"]["hf"].values()} == {
        ("conversations.json", "jpg", "json")}


def _torchcodec_problem() -> str | None:
    res = subprocess.run([sys.executable, "-c", "from torchcodec.decoders import VideoDecoder, AudioDecoder"],
                         capture_output=True, text=True, timeout=120)
    return None if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]


def test_hf_datasets_decodes_every_video_and_flac_through_its_own_features(corpus, tmp_path):
    """datasets decodes video and audio with torchcodec, which needs FFmpeg's shared libraries
    (`make test` installs them where it can: libavcodec etc. from the system's packages)."""
    problem = _torchcodec_problem()
    if problem:
        pytest.skip(f"torchcodec cannot load FFmpeg here ({problem}); install libavcodec/libavformat")
    view = manifest_view(corpus)
    sets = ("video", "captioned", "instructions")
    got = read_stock(corpus, tmp_path, sets, hf=True, hf_media=True)
    for name in sets:
        assert set(got[name]["hf"]) == {k for s, k in view["samples"] if s == name}
        for key, sample in got[name]["hf"].items():
            assert "frames" in sample and "flac_samples" in sample, (name, key)
            check_sample(name, key, sample, view, "hf")


def test_one_query_selects_videos_and_images_and_their_subset_shards_into_one_set(corpus, tmp_path):
    from ivdata.manifest import Manifest
    with Manifest.for_queries(corpus.manifest_path) as m:
        rows = m.query(f"SELECT DISTINCT clip_id, media FROM ({LONG_CAPTIONS_SQL}) JOIN clip_info USING (clip_id)"
                       ).fetchall()
    media = dict(rows)
    assert set(media.values()) == {"video", "image"}
    with corpus.manifest(read_only=True) as m:
        texts = m.execute("SELECT clip_id, text FROM captions WHERE text <> ''").fetchall()
    assert set(media) == {cid for cid, t in texts if len(t.split()) > LONG}
    got = read_stock(corpus, tmp_path, ("mixed",), hf=False)["mixed"]
    assert set(got["wds"]) == set(got["wids"]) == set(media)
    for key, s in got["wds"].items():
        expected = ["flac", "json", "mp4"] if media[key] == "video" else ["jpg", "json"]
        assert s["members"] == expected and s["json"]["media"] == media[key]
    assert verify(corpus, "mixed")[0] == []
    # the trainer's reader takes the mixed set as it is: a video or an image member per sample
    from ivtrain.data.index import ShardIndex
    index = ShardIndex.open(str(corpus.wids_index("mixed")), cache_setting="off")
    assert sorted(index.media(i) for i in range(len(index))) == sorted(
        "mp4" if media[index.key(i)] == "video" else "jpg" for i in range(len(index)))


def test_verify_is_clean_for_every_kind(corpus):
    problems, counts = verify(corpus)
    assert problems == [] and counts["shards"] >= len(SETS)
