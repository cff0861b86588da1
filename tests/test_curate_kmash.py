"""A KMash recipe over a fixture data root draws the scaled per-source counts it asks for."""
import shutil
from pathlib import Path

import pytest

from ivdata.curate.kmash import format_plan, load_recipe, plan_kmash, scaled_quota
from ivdata.curate.sources import read_source, source_key
from ivkit.typed_yaml import ConfigError

FIX = Path(__file__).parent / "fixtures" / "curate"
RECIPES = Path(__file__).parent.parent / "recipes"
LAYOUT = {  # fixture file -> where the recipe expects it under the data root
    "kinetics400_train.csv": "kinetics400/train.csv",
    "kinetics400_validate.csv": "kinetics400/validate.csv",
    "kinetics400_test.csv": "kinetics400/test.csv",
    "kinetics600_train.csv": "kinetics600/train.csv",
    "kinetics700_train.csv": "kinetics700_2020/train.csv",
    "something-something-v2-train.json": "ssv2/something-something-v2-train.json",
    "HACS_clips_v1.1.csv": "hacs/HACS_clips_v1.1.csv",
    "activity_net.v1-3.min.json": "activitynet/activity_net.v1-3.min.json",
    "trainingSet.csv": "mit/trainingSet.csv",
}
VIDEOS = {"kinetics": "kinetics/videos", "ssv2": "ssv2/videos", "hacs": "hacs/videos",
          "activitynet": "activitynet/videos", "mit": "mit/videos"}


def video_name(fmt: str, r: dict) -> str:
    if fmt == "kinetics":
        return f"{r['source_id']}_{int(r['start']):06d}_{int(r['end']):06d}.mp4"
    if fmt == "ssv2":
        return f"{r['source_id']}.webm"
    if fmt == "activitynet":
        return f"v_{r['source_id']}.mp4"
    if fmt == "mit":
        return r["source_id"]
    return f"{r['source_id']}.mp4"


def make_data_root(root: Path, write_video, skip_every: int = 0) -> Path:
    """Lay the fixture annotations out as the recipes expect; write a video file for each row."""
    skipped = 0
    for src, dst in LAYOUT.items():
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIX / src, root / dst)
    for fname, fmt in [("kinetics400_train.csv", "kinetics"), ("kinetics600_train.csv", "kinetics"),
                       ("kinetics700_train.csv", "kinetics"), ("something-something-v2-train.json", "ssv2"),
                       ("HACS_clips_v1.1.csv", "hacs"), ("activity_net.v1-3.min.json", "activitynet"),
                       ("trainingSet.csv", "mit")]:
        for i, r in enumerate(read_source(fmt, FIX / fname)):
            if skip_every and i % skip_every == skip_every - 1:
                skipped += 1
                continue
            p = root / VIDEOS[fmt] / video_name(fmt, r)
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                write_video(p)
    return root


def test_kmash_scaled_counts_and_k710_rules(tmp_path):
    root = make_data_root(tmp_path, lambda p: p.touch())
    recipe = load_recipe(RECIPES / "kmash_1.1m.yaml")
    assert {s.name: s.quota for s in recipe.sources} == {
        "k710": 658000, "ssv2": 169000, "hacs": 106000, "anet": 15000, "mit": 152000}
    assert recipe.include_labels is False
    scale = 1e-4
    plan = plan_kmash(recipe, root, scale)
    per = {s.name: s for s in plan.sources}
    want = {"k710": 66, "ssv2": 17, "hacs": 11, "anet": 2, "mit": 15}
    assert {n: scaled_quota(q, scale) for n, q in
            {s.name: s.quota for s in recipe.sources}.items()} == want
    got = {}
    for r in plan.rows:
        got[r["mix_source"]] = got.get(r["mix_source"], 0) + 1
    assert got == want and {n: s.selected for n, s in per.items()} == want
    # K710: K600/K700 rows repeating a K400 train video are read once; Kinetics val videos never drawn.
    assert per["k710"].duplicates == 10 + 7
    assert per["k710"].excluded == 3
    val_keys = {source_key(r) for r in read_source("kinetics", root / "kinetics400/validate.csv")}
    assert not val_keys & {source_key(r) for r in plan.rows if r["mix_source"] == "k710"}
    # Provenance on every drawn row; every row's file exists.
    for r in plan.rows:
        assert r["recipe"] == "kmash_1.1m" and r["annotation_file"] and r["annotation_line"] is not None
        assert r["split"] == "train" and Path(r["path"]).is_file()
    # The K600/K700 val/test files are absent from the fixture root: reported, not fatal.
    assert any("kinetics600/validate.csv" in m for m in plan.missing_annotations)
    assert not plan.complete
    text = format_plan(plan)
    assert "k710" in text and "missing:" in text


def test_kmash_is_seeded_and_sources_draw_independently(tmp_path):
    root = make_data_root(tmp_path, lambda p: p.touch())
    recipe = load_recipe(RECIPES / "kmash_1.1m.yaml")
    ids = lambda plan, src: [(r["source_id"], r["start"]) for r in plan.rows if r["mix_source"] == src]
    a, b = plan_kmash(recipe, root, 1e-4), plan_kmash(recipe, root, 1e-4)
    assert [r["source_id"] for r in a.rows] == [r["source_id"] for r in b.rows]
    recipe.sources[1].quota = 100000             # change SSv2 only
    c = plan_kmash(recipe, root, 1e-4)
    assert ids(c, "k710") == ids(a, "k710") and ids(c, "ssv2") != ids(a, "ssv2")
    recipe.seed = 1
    d = plan_kmash(recipe, root, 1e-4)
    assert ids(d, "k710") != ids(a, "k710")


def test_kmash_reports_missing_files_and_shortfall(tmp_path):
    root = make_data_root(tmp_path, lambda p: p.touch(), skip_every=3)
    plan = plan_kmash(load_recipe(RECIPES / "kmash_1.1m.yaml"), root, 1e-3)
    per = {s.name: s for s in plan.sources}
    assert per["ssv2"].missing_files == 10 and per["ssv2"].missing_examples
    assert per["ssv2"].available == 20 and per["ssv2"].selected == 20 and per["ssv2"].shortfall == 169 - 20
    assert all(r["path"] for r in plan.rows)
    summary = plan.summary()
    assert summary["complete"] is False and summary["sources"][1]["shortfall"] == 149


def test_kmash_2m_adds_the_extra_youtube_list(tmp_path):
    root = make_data_root(tmp_path, lambda p: p.touch())
    (root / "extra/videos").mkdir(parents=True)
    lines = ["youtube_id,start,end"] + [f"extra{i:06d},0,8" for i in range(12)]
    (root / "extra/youtube_844k.csv").write_text("\n".join(lines) + "\n")
    for i in range(12):
        (root / f"extra/videos/extra{i:06d}.mp4").touch()
    recipe = load_recipe(RECIPES / "kmash_2m.yaml")
    assert recipe.total_quota == 1_100_000 + 844_000
    plan = plan_kmash(recipe, root, 1e-5)
    per = {s.name: s.selected for s in plan.sources}
    assert per["youtube_extra"] == 8 and per["k710"] == 7


def test_bad_recipe_is_a_clear_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nsources:\n  - {name: a, quota: -1, annotations: []}\n")
    with pytest.raises(ConfigError, match="quota must be a non-negative integer"):
        load_recipe(p)
    p.write_text("name: x\nsources:\n  - {name: a, quota: 1, annotations: [{path: x.csv}]}\n")
    with pytest.raises(ConfigError, match=r"missing key sources\[0\].annotations\[0\].format"):
        load_recipe(p)
    p.write_text("name: x\nsources:\n  - {name: a, quota: 1, annotations: [], quotas: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key sources\[0\].quotas"):
        load_recipe(p)


def tiny_video(path: Path, seconds: float, fps: int = 4) -> None:
    """A real, decodable file of the given length (48x32 drifting gradient): H.264, or VP9 for .webm (SSv2)."""
    import av
    import numpy as np
    with av.open(str(path), "w") as out:
        webm = path.suffix == ".webm"
        s = out.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        s.options = {"deadline": "realtime", "cpu-used": "8"} if webm else {"preset": "ultrafast"}
        yy, xx = np.mgrid[0:32, 0:48]
        for i in range(max(1, round(seconds * fps))):
            img = np.stack([(xx * 5 + i * 9) % 256, (yy * 7 + i) % 256, (xx + yy + i) % 256], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_kmash_build_has_the_counts_and_provenance_in_the_manifest(tmp_path, monkeypatch):
    """End to end: plan over the fixture root, real video files, ingest -> clips -> shards."""
    import json
    import tarfile

    from ivdata.corpus import Corpus
    from ivdata.kmash_build import build_kmash

    monkeypatch.setenv("IVKIT_PROGRESS", "0")
    root = make_data_root(tmp_path / "data", lambda p: p.touch())
    recipe = load_recipe(RECIPES / "kmash_1.1m.yaml")
    plan = plan_kmash(recipe, root, 1e-5)
    want = {"k710": 7, "ssv2": 2, "hacs": 1, "anet": 1, "mit": 2}
    assert {s.name: s.selected for s in plan.sources} == want
    # Only the drawn rows' files are ever opened: make those real videos, long enough for their spans.
    for r in plan.rows:
        if r["file_is_span"]:
            length = r["end"] - r["start"]
        elif r["end"] is not None:
            length = r["end"] + 1.0
        else:
            length = 3.0
        tiny_video(Path(r["path"]), length)
    corpus = Corpus.init("kmash", home=tmp_path)
    result = build_kmash(corpus, recipe, plan, shard_maxcount=100)
    assert result["failed"] == [] and result["per_source"] == want and result["clips"] == sum(want.values())
    with corpus.manifest(read_only=True) as m:
        clips = m.rows("SELECT c.clip_id, c.start_s, c.end_s, v.source, v.source_id, v.label, v.split, v.extra "
                       "FROM subsets s JOIN clips c USING (clip_id) JOIN videos v USING (video_id) "
                       "WHERE s.name = 'kmash_1_1m'")
    drawn = {(r["source"], r["source_id"]): r for r in plan.rows}
    for c in clips:
        extra = json.loads(c["extra"])
        r = drawn[(c["source"], c["source_id"])]
        assert extra["recipe"] == "kmash_1.1m" and extra["mix_source"] == r["mix_source"]
        assert extra["annotation_file"] == r["annotation_file"] and extra["annotation_line"] == r["annotation_line"]
        assert c["split"] == "train" and c["label"] == r["label"]
        if r["file_is_span"]:   # Kinetics trimmed file: the clip is the whole file, YouTube span kept
            assert extra["source_span"] == [r["start"], r["end"]] and c["start_s"] == 0.0
        elif r["start"] is not None:
            assert (c["start_s"], c["end_s"]) == (r["start"], r["end"])
    # Training shards carry no labels by default.
    tars = corpus.shard_list("kmash_1_1m")
    assert tars
    for t in tars:
        with tarfile.open(t) as tf:
            for mem in tf.getmembers():
                if mem.name.endswith(".json"):
                    assert "label" not in json.loads(tf.extractfile(mem).read())
