"""dedupe: exact duplicates, near-duplicates and eval-split leakage, every removal auditable.

needs: cut clips (clips.path, sha256), videos (source, source_id, split, sha256, extra.id_namespace).
produces: embeddings (+ .npy parts), dedup rows (methods source_id, sha256, near_dup, leakage), leakage
rows (the evidence), and the subset `cfg.subset` of training clips that every method kept; when the corpus
holds images, `<cfg.subset>_images` of the images every method kept (a shard set holds one kind of media).

Images go through the same machinery as clips: an image's embedding is its frame's, exact duplicates share
a sha256. Near-duplicates are sought among images and among clips separately (a frame of a clip is not a
copy of the clip: they serve different objectives); leakage is sought across both (an image taken from an
evaluation video is leakage).

Per-clip work (parallel, resumable): sample frames and embed each clip not yet embedded with the model.
Then, once, over the whole corpus (`finish`, cheap next to embedding, recomputed on every run so the
decisions always reflect the current corpus): exact groups, near-duplicate clusters over training
clips, and leakage of training clips into val/test videos (by id, by content hash, by embedding).
Eval clips (videos with split val/test) are never removed; they are what training must not contain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ivdata.corpus import Corpus
from ivdata.curate.ann import IndexConfig
from ivdata.curate.dedup import (ClipFacts, DedupDecision, default_priority, near_duplicates,
                                 sha256_duplicates, source_id_duplicates)
from ivdata.curate.embed import cached_embedder, clip_embedding, embedder_name
from ivdata.curate.leakage import (EvalVideo, LeakMatch, eval_ids_from_annotations, match_embeddings,
                                   match_source_ids, parse_eval_spec)
from ivdata.curate.sources import READERS
from ivdata.curate.store import load_embeddings, write_part
from ivdata.manifest import Manifest
from ivdata.splits import canonical_split, eval_split_sql, is_eval_split
from ivdata.stages.base import Stage, StageStats, failed

METHODS = ("source_id", "sha256", "near_dup", "leakage")


@dataclass
class DedupeConfig:
    embedder: str = "thumb"                 # thumb[:SIDE] | hf:MODEL_DIR | openclip:MODEL_DIR
    num_frames: int = 8
    methods: tuple[str, ...] = METHODS
    near_dup_threshold: float = 0.90        # cosine; thumb embeddings of re-encodes are >= 0.95
    leakage_threshold: float | None = None  # default: near_dup_threshold
    k: int = 16                             # neighbours asked per clip
    eval_annotations: list[str] = field(default_factory=list)  # FORMAT[:SOURCE]:PATH of val/test lists
    source_order: list[str] = field(default_factory=list)     # tie-break: earlier sources are kept
    index: IndexConfig = field(default_factory=IndexConfig)
    subset: str = "deduped"
    device: str = "cpu"

    def __post_init__(self):
        bad = set(self.methods) - set(METHODS)
        if bad:
            raise ValueError(f"unknown dedup methods {sorted(bad)}; known: {METHODS}")
        if not 0 < self.near_dup_threshold <= 1:
            raise ValueError("near_dup_threshold is a cosine similarity in (0, 1]")
        for spec in self.eval_annotations:      # checked now, not after the embeddings are computed
            fmt, path, _ = parse_eval_spec(spec)
            if fmt not in READERS or not path:
                raise ValueError(f"--eval {spec!r}: give FORMAT[:SOURCE]:PATH with FORMAT one of {sorted(READERS)}")
            if not Path(path).is_file():
                raise ValueError(f"--eval {spec!r}: annotation file {path} does not exist")


CLIP_FACTS_SQL = """
SELECT c.clip_id, c.video_id, v.source, v.source_id, v.split, v.sha256 AS video_sha256, c.sha256,
       c.start_s, c.duration_s, c.width, c.height, c.media,
       coalesce(json_extract_string(v.extra, '$.id_namespace'), v.source) AS namespace
FROM clips c JOIN videos v USING (video_id)
WHERE c.status = 'ok' ORDER BY c.clip_id
"""


class DedupeStage(Stage):
    name = "dedupe"
    needs = ("clips.path", "clips.sha256", "videos.source_id", "videos.split")
    produces = ("embeddings", "dedup", "leakage", "subsets")

    def __init__(self, corpus: Corpus, cfg: DedupeConfig | None = None):
        super().__init__(corpus)
        self.cfg = cfg or DedupeConfig()
        self.model = embedder_name(self.cfg.embedder)
        self._run_tag = None

    def _needs_embeddings(self) -> bool:
        return "near_dup" in self.cfg.methods or "leakage" in self.cfg.methods

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        self._run_tag = m.scalar("SELECT coalesce(max(run_id), 0) FROM runs")
        if not self._needs_embeddings():
            return []
        return m.rows("SELECT c.clip_id, c.path FROM clips c WHERE c.status = 'ok' AND NOT EXISTS "
                      "(SELECT 1 FROM embeddings e WHERE e.clip_id = c.clip_id AND e.model = ?) ORDER BY c.clip_id",
                      [self.model])

    def work(self, item: dict) -> np.ndarray:
        return clip_embedding(cached_embedder(self.cfg.embedder, self.cfg.device), item["path"], self.cfg.num_frames)

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        ok = [(it["clip_id"], res) for it, res in done if not failed(res)]
        stats.failed += len(done) - len(ok)
        errors = stats.extra.setdefault("embed_errors", [])
        for it, res in done:
            if failed(res) and len(errors) < 20:   # examples; the count is stats.failed
                errors.append(f"{it['clip_id']}: {res.reason}")
        if not ok:
            return
        first = min(c for c, _ in ok)
        rows = write_part(self.corpus.root, self.model, [c for c, _ in ok], np.stack([e for _, e in ok]),
                          f"{self._run_tag:06d}-{first}")
        m.insert_rows("embeddings", rows)
        stats.ok += len(ok)

    # -- the corpus-wide decisions ---------------------------------------------------------------
    def finish(self, m: Manifest, stats: StageStats) -> None:
        cfg = self.cfg
        facts = m.rows(CLIP_FACTS_SQL)
        for f in facts:   # canonical names, also for rows ingested before ingest normalised them
            f["split"] = canonical_split(f["split"]) or f["split"]
        train = [f for f in facts if not is_eval_split(f["split"])]
        evals = [f for f in facts if is_eval_split(f["split"])]
        clips = [ClipFacts(f["clip_id"], f["video_id"], f["source"],
                           f"{f['namespace']}:{f['source_id']}" if f["source_id"] else None,
                           f["video_sha256"], f["sha256"], f["start_s"] or 0.0, f["duration_s"] or 0.0,
                           f["width"] or 0, f["height"] or 0) for f in train]
        priority = default_priority(cfg.source_order)
        decisions, leaks = [], []
        if "source_id" in cfg.methods:
            decisions += source_id_duplicates(clips, priority)
        if "sha256" in cfg.methods:
            decisions += sha256_duplicates(clips, priority)
        emb_ids, emb = (load_embeddings(m, self.corpus.root, self.model) if self._needs_embeddings()
                        else ([], None))
        pos = {c: i for i, c in enumerate(emb_ids)}
        if "near_dup" in cfg.methods:
            stats.extra["near_dup_pairs"] = 0
            for media in sorted({f["media"] for f in train}):
                have = [c for c, f in zip(clips, train) if f["media"] == media and c.clip_id in pos]
                near, pairs = near_duplicates(have, emb[[pos[c.clip_id] for c in have]] if have else
                                              np.zeros((0, 1), np.float32), cfg.near_dup_threshold, priority,
                                              k=cfg.k, index=cfg.index)
                decisions += near
                stats.extra["near_dup_pairs"] += len(pairs)
        if "leakage" in cfg.methods:
            leaks = self._leakage(train, evals, emb, pos)
            by_clip: dict[str, LeakMatch] = {}
            for lk in leaks:  # the strongest evidence per clip goes into dedup; all of it into leakage
                cur = by_clip.get(lk.clip_id)
                if cur is None or (lk.similarity or 1.0) > (cur.similarity or 1.0):
                    by_clip[lk.clip_id] = lk
            decisions += [DedupDecision(c.clip_id, "leakage", None, c.clip_id not in by_clip,
                                        (by_clip[c.clip_id].eval_clip_id or None) if c.clip_id in by_clip else None,
                                        by_clip[c.clip_id].similarity if c.clip_id in by_clip else None)
                          for c in clips]
        run_id = m.scalar("SELECT max(run_id) FROM runs WHERE stage = 'dedupe'")
        m.execute("BEGIN TRANSACTION")
        try:
            methods = list(cfg.methods)
            m.execute(f"DELETE FROM dedup WHERE method IN ({', '.join('?' * len(methods))})", methods)
            m.insert_rows("dedup", [d.row() for d in decisions])
            if "leakage" in cfg.methods:
                m.execute("DELETE FROM leakage")
                m.insert_rows("leakage", [lk.row(run_id) for lk in leaks], mode="INSERT OR IGNORE")
            m.execute("COMMIT")
        except Exception:
            m.execute("ROLLBACK")
            raise
        # Training clips (and images) that every dedup method kept (select_subset runs its own transaction).
        kept = (f"(split IS NULL OR NOT {eval_split_sql('split')}) AND clip_id NOT IN "
                "(SELECT clip_id FROM dedup WHERE NOT kept)")
        nkept = m.select_subset(cfg.subset, where=f"media = 'video' AND {kept}")
        if any(f["media"] == "image" for f in facts):
            stats.extra["kept_images"] = m.select_subset(f"{cfg.subset}_images", where=f"media = 'image' AND {kept}")
        removed = {}
        for d in decisions:
            if not d.kept:
                removed[d.method] = removed.get(d.method, 0) + 1
        stats.extra.update(removed=removed, leaked_clips=len({lk.clip_id for lk in leaks}),
                           train_clips=len(train), eval_clips=len(evals), kept=nkept, model=self.model)

    def _leakage(self, train: list[dict], evals: list[dict], emb, pos: dict) -> list[LeakMatch]:
        cfg = self.cfg
        eval_ids = eval_ids_from_annotations([parse_eval_spec(s) for s in cfg.eval_annotations])
        for f in evals:  # val/test videos ingested into this manifest count too
            key = f"{f['namespace']}:{f['source_id']}" if f["source_id"] else None
            if key:
                ev = EvalVideo(f["source"], f["split"], str(f["source_id"]), "manifest")
                if all(e.source != ev.source or e.split != ev.split for e in eval_ids.get(key, [])):
                    eval_ids.setdefault(key, []).append(ev)
        leaks = match_source_ids([(f["clip_id"], f"{f['namespace']}:{f['source_id']}") for f in train
                                  if f["source_id"]], eval_ids)
        eval_by_sha = {}
        for f in evals:
            if f["sha256"]:
                eval_by_sha.setdefault(f["sha256"], f)
            if f["video_sha256"]:
                eval_by_sha.setdefault(f["video_sha256"], f)
        for f in train:  # byte-identical to an eval clip or video
            e = eval_by_sha.get(f["sha256"]) or eval_by_sha.get(f["video_sha256"])
            if e:
                leaks.append(LeakMatch(f["clip_id"], "sha256", e["source"], e["split"], str(e["source_id"] or ""),
                                       e["clip_id"], 1.0, "manifest"))
        if emb is not None and evals:
            t = [f for f in train if f["clip_id"] in pos]
            e = [f for f in evals if f["clip_id"] in pos]
            if t and e:
                leaks += match_embeddings([f["clip_id"] for f in t], emb[[pos[f["clip_id"]] for f in t]],
                                          [dict(clip_id=f["clip_id"], source=f["source"], split=f["split"],
                                                source_id=f["source_id"] or "") for f in e],
                                          emb[[pos[f["clip_id"]] for f in e]],
                                          cfg.leakage_threshold or cfg.near_dup_threshold, index=cfg.index)
        return leaks


def dedupe_report(m: Manifest) -> dict:
    """Counts a reviewer starts from: removed per method, leaks per eval source and split."""
    removed = {r["method"]: r["n"] for r in m.rows(
        "SELECT method, count(*) AS n FROM dedup WHERE NOT kept GROUP BY method ORDER BY method")}
    leaks = m.rows("SELECT eval_source, eval_split, method, count(DISTINCT clip_id) AS clips FROM leakage "
                   "GROUP BY ALL ORDER BY ALL")
    return {"removed": removed, "leakage": leaks}

