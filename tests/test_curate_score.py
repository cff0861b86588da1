"""The score stage on real clips (motion, aesthetic, clip-caption similarity) and InternVid2 selection."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ivdata.curate.filters import FilterRules
from ivdata.curate.internvid2 import div_sql, load_recipe, select
from ivdata.manifest import utcnow
from ivdata.pipeline import build_corpus
from ivdata.stages.base import run_stage
from ivdata.stages.dedupe import DedupeConfig, DedupeStage
from ivdata.stages.score import ScoreConfig, ScoreStage
from test_curate_embed import BIKES, PHONE, save_tiny_clip, still_video

RECIPES = Path(__file__).parent.parent / "recipes"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    os.environ.setdefault("IVKIT_PROGRESS", "0")
    home = tmp_path_factory.mktemp("score")
    vd = home / "videos"
    vd.mkdir()
    shutil.copy(BIKES, vd / "bikes.mp4")
    shutil.copy(PHONE, vd / "carphone.mp4")
    still_video(vd / "still.mp4")
    corpus = build_corpus("scored", [vd], home=home, split="shots", cut="reencode", short_side=128)
    clip_dir = save_tiny_clip(home / "tiny-clip")
    from safetensors.torch import save_file
    torch.manual_seed(0)
    save_file({"layers.0.weight": torch.randn(8, 16), "layers.0.bias": torch.zeros(8),
               "layers.2.weight": torch.randn(1, 8), "layers.2.bias": torch.tensor([5.0])},
              home / "aesthetic.safetensors")
    with corpus.manifest() as m:
        clips = m.rows("SELECT clip_id, uri FROM clip_info WHERE status = 'ok' ORDER BY clip_id")
        texts = {"bikes": "people cycling down a hill", "carphone": "a phone call in a car", "still": "a red box"}
        # Captions as the annotate stage records them; one clip gets two kinds (AVS must win).
        rows = [dict(clip_id=c["clip_id"], kind="V", text=texts[Path(c["uri"]).stem], lang="en", model="test",
                     prompt_hash="0", extra=None, created_at=utcnow()) for c in clips]
        rows.append(dict(rows[0], kind="AVS", text="a cartoon bunny wakes up"))
        m.insert_rows("captions", rows)
    cfg = ScoreConfig(metrics=("motion", "aesthetic", "clip_text_sim", "text_overlay"), model_dir=str(clip_dir),
                      aesthetic_head=str(home / "aesthetic.safetensors"))
    stats = run_stage(ScoreStage(corpus, cfg))
    return dict(corpus=corpus, cfg=cfg, stats=stats, clips=clips, clip_dir=clip_dir, first_clip=clips[0]["clip_id"])


def test_every_clip_scored_once_per_metric(scored):
    corpus, cfg, clips = scored["corpus"], scored["cfg"], scored["clips"]
    assert scored["stats"].failed == 0 and scored["stats"].ok == len(clips)
    with corpus.manifest(read_only=True) as m:
        rows = m.rows("SELECT s.clip_id, metric, value, model, c.uri FROM scores s JOIN clip_info c USING (clip_id)")
    assert len(rows) == 4 * len(clips)
    by = {(r["clip_id"], r["metric"]): r for r in rows}
    for c in clips:
        for mt in ("motion", "aesthetic", "clip_text_sim", "text_overlay"):
            assert by[(c["clip_id"], mt)]["model"] == cfg.model_of(mt) and np.isfinite(by[(c["clip_id"], mt)]["value"])
        assert -1.0 <= by[(c["clip_id"], "clip_text_sim")]["value"] <= 1.0
    motion = {Path(r["uri"]).stem: r["value"] for r in rows if r["metric"] == "motion"}
    assert motion["still"] < 0.002 < min(v for k, v in motion.items() if k != "still")


def test_clip_text_similarity_uses_the_preferred_caption(scored):
    """Recompute one clip's similarity by hand with the AVS caption (preferred over V)."""
    from ivdata.curate.embed import make_embedder, l2norm
    from ivdata.curate.frames import sample_frames
    corpus, cid = scored["corpus"], scored["first_clip"]
    with corpus.manifest(read_only=True) as m:
        path = m.scalar("SELECT path FROM clips WHERE clip_id = ?", [cid])
        got = m.scalar("SELECT value FROM scores WHERE clip_id = ? AND metric = 'clip_text_sim'", [cid])
    e = make_embedder(f"hf:{scored['clip_dir']}")
    video = l2norm(e.embed_frames(sample_frames(path, 8, max_side=None)).mean(0))
    assert abs(float(video @ e.embed_texts(["a cartoon bunny wakes up"])[0]) - got) < 1e-5
    assert abs(float(video @ e.embed_texts(["people cycling down a hill"])[0]) - got) > 1e-4


def test_rerun_scores_nothing_new(scored):
    stats = run_stage(ScoreStage(scored["corpus"], scored["cfg"]))
    assert stats.pending == 0


def test_internvid2_recipe_selects_top_k_and_div(scored):
    corpus = scored["corpus"]
    recipe = load_recipe(RECIPES / "internvid2.yaml")
    assert recipe.score["metrics"] == ["motion", "aesthetic", "clip_text_sim", "text_overlay"]
    run_stage(DedupeStage(corpus, DedupeConfig(methods=("source_id", "sha256", "near_dup"))))
    with corpus.manifest() as m:
        recipe.subsets[1].n = 2
        counts = select(m, recipe)
        sims = dict(m.execute("SELECT clip_id, value FROM scores WHERE metric = 'clip_text_sim'").fetchall())
        uri = dict(m.execute("SELECT clip_id, uri FROM clip_info").fetchall())
        flt = m.subset_clip_ids("internvid2_flt")
        div = m.subset_clip_ids("internvid2_div")
        query = m.scalar("SELECT query FROM subset_defs WHERE name = 'internvid2_div'")
        again = [r[0] for r in m.execute(query).fetchall()]
        passing = [r[0] for r in m.execute("SELECT clip_id FROM clip_info WHERE " + recipe.rules.where()).fetchall()]
        overlay = dict(m.execute("SELECT clip_id, value FROM scores WHERE metric = 'text_overlay'").fetchall())
        motion = dict(m.execute("SELECT clip_id, value FROM scores WHERE metric = 'motion'").fetchall())
    # The rules, checked one by one: the still clip fails min_motion, static text over 4% fails max_text_overlay.
    assert sorted(passing) == sorted(c for c in sims if motion[c] >= 0.002 and motion[c] <= 1.5
                                     and overlay[c] <= 0.04)
    assert passing and not any(Path(uri[c]).stem == "still" for c in passing)
    assert counts == {"internvid2_flt": round(0.5 * len(passing)), "internvid2_div": min(2, len(passing))}
    assert sorted(flt, key=lambda c: -sims[c]) == sorted(passing, key=lambda c: -sims[c])[:len(flt)]
    assert not any(Path(uri[c]).stem == "still" for c in flt + div)
    assert sorted(again) == div                                     # the recorded query reproduces it


def test_div_weights_by_clips_per_video(scored):
    """DIV picks a clip of a 1-clip video 3x as often as a clip of a 3-clip video (weights 1/#clips)."""
    corpus = scored["corpus"]
    rules = FilterRules(min_motion=0.002)
    with corpus.manifest(read_only=True) as m:
        uri = dict(m.execute("SELECT clip_id, uri FROM clip_info").fetchall())
        pool = ("SELECT clip_id, video_id FROM clip_info WHERE " + rules.where())
        per_video = {}
        for cid, vid in m.execute(pool).fetchall():
            per_video.setdefault(vid, []).append(cid)
        assert sorted(len(v) for v in per_video.values()) == [1, 3]
        wins = {"carphone": 0, "bikes": 0}
        for seed in range(300):
            (cid,), = m.execute(div_sql(pool, 1, seed)).fetchall()
            wins[Path(uri[cid]).stem] += 1
    # Expected share of the single carphone clip: 1 / (1 + 3 * 1/3) = 0.5 (uniform would give 0.25).
    assert 0.4 < wins["carphone"] / 300 < 0.6, wins


def test_report_shows_score_histograms_and_captions(scored, tmp_path):
    from ivdata.curate.report import write_report
    page = write_report(scored["corpus"].manifest_path, tmp_path / "r")
    text = page.read_text()
    pngs = sorted(p.name for p in page.parent.glob("score_*.png"))
    assert sorted(p.split("_", 2)[2] for p in pngs) == ["aesthetic.png", "clip_text_sim.png", "motion.png",
                                                        "text_overlay.png"]
    assert all(f'src="{p}"' in text for p in pngs)
    data = json.loads((page.parent / "report.json").read_text())
    assert data["languages"] == [{"lang": "en", "n": len(scored["clips"]) + 1}]


def test_demo_curation_writes_the_report(scored):
    """What `make demo` calls after building its corpus (its curation half)."""
    from ivdata.curate_demo import curate_and_report
    page = curate_and_report(scored["corpus"], model_dir=str(scored["clip_dir"]))
    text = page.read_text()
    assert page == scored["corpus"].root / "report" / "index.html"
    assert "Dedup: clips examined per method" in text and "score_" in text
    with scored["corpus"].manifest(read_only=True) as m:
        # No clip has a val/test split here, so every clip is a training clip that dedup examined.
        assert m.scalar("SELECT count(*) FROM dedup WHERE method = 'near_dup'") == len(scored["clips"])


def test_a_head_of_the_wrong_size_fails_once_up_front(scored, tmp_path):
    """An aesthetic head that does not take the model's embeddings: exit 2 with one line before any
    clip, nothing recorded (it used to fail every clip and exit 0)."""
    from safetensors.torch import save_file
    from typer.testing import CliRunner
    from cli import app
    corpus = scored["corpus"]
    save_file({"layers.0.weight": torch.randn(1, 32), "layers.0.bias": torch.zeros(1)}, tmp_path / "h32.safetensors")
    with corpus.manifest(read_only=True) as m:
        before = (m.scalar("SELECT count(*) FROM scores"), m.scalar("SELECT count(*) FROM runs"))
    res = CliRunner().invoke(app, ["data", "score", "-c", str(corpus.manifest_path), "--metrics", "aesthetic",
                                   "--model-dir", str(scored["clip_dir"]),
                                   "--aesthetic-head", str(tmp_path / "h32.safetensors")])
    assert res.exit_code == 2 and "takes 32-d embeddings" in res.output and "16-d" in res.output, res.output
    assert res.output.strip().count("\n") == 0
    with corpus.manifest(read_only=True) as m:
        assert (m.scalar("SELECT count(*) FROM scores"), m.scalar("SELECT count(*) FROM runs")) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without a GPU")
def test_scoring_on_gpus_is_checked_on_a_host_without_one(scored):
    """The GPUs may be on the cluster's worker nodes only: the model and head are checked on CPU here, and each
    worker asks for a GPU."""
    cfg = ScoreConfig(metrics=("aesthetic",), model_dir=str(scored["clip_dir"]),
                      aesthetic_head=scored["cfg"].aesthetic_head, device="cuda")
    stage = ScoreStage(scored["corpus"], cfg)
    with scored["corpus"].manifest(read_only=True) as m:
        stage.check(m, retry_failed=False)
    assert stage.resources().gpus == 1
