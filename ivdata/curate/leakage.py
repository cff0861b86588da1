"""Eval-split leakage: training clips whose video is, or looks like, a validation or test video.

Two kinds of evidence:
  source_id  the training clip's video has the same id (in the same namespace, e.g. a YouTube id) as a
             val/test video of an evaluation dataset: read from the dataset's annotation files, or
             from val/test videos ingested into the same manifest.
  near_dup   the training clip's embedding is within `threshold` cosine of an eval clip's embedding
             (the eval clips must be in the manifest with their embeddings).
Kinetics-400/600/700, SSv2, MiT, ActivityNet and HACS all share YouTube ids where they come from
YouTube, so one Kinetics val video reappearing as an HACS training clip is caught by its id.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivdata.curate.ann import IndexConfig, build_index, search
from ivdata.curate.sources import read_source, source_key
from ivdata.splits import EVAL_SPLITS


@dataclass
class EvalVideo:
    source: str
    split: str
    source_id: str
    evidence: str


@dataclass
class LeakMatch:
    clip_id: str
    method: str
    eval_source: str
    eval_split: str
    eval_source_id: str
    eval_clip_id: str = ""
    similarity: float | None = None
    evidence: str = ""

    def row(self, run_id: int | None = None) -> dict:
        return dict(clip_id=self.clip_id, method=self.method, eval_source=self.eval_source,
                    eval_split=self.eval_split, eval_source_id=self.eval_source_id, eval_clip_id=self.eval_clip_id,
                    similarity=self.similarity, evidence=self.evidence, run_id=run_id)


def parse_eval_spec(spec: str) -> tuple[str, str, str | None]:
    """`FORMAT:PATH` or `FORMAT:SOURCE:PATH` (e.g. kinetics:k600:/data/k600/validate.csv)."""
    fmt, _, rest = spec.partition(":")
    source, sep, path = rest.partition(":")
    if sep and re.fullmatch(r"[A-Za-z0-9_-]+", source):
        return fmt, path, source
    return fmt, rest, None


def eval_ids_from_annotations(specs: list[tuple[str, str | Path, str | None]]) -> dict[str, list[EvalVideo]]:
    """source_key -> eval videos, from (format, path, source) annotation files (val/test rows only)."""
    out: dict[str, list[EvalVideo]] = defaultdict(list)
    for fmt, path, source in specs:
        for r in read_source(fmt, path, source):
            if r["split"] in EVAL_SPLITS:
                out[source_key(r)].append(EvalVideo(r["source"], r["split"], str(r["source_id"]),
                                                    f"{r['annotation_file']}:{r['annotation_line']}"))
    return dict(out)


def match_source_ids(train: list[tuple[str, str]], eval_ids: dict[str, list[EvalVideo]]) -> list[LeakMatch]:
    """train: (clip_id, source_key) pairs. One match per (clip, eval video) found."""
    out = []
    for clip_id, key in train:
        for ev in eval_ids.get(key, ()):
            out.append(LeakMatch(clip_id, "source_id", ev.source, ev.split, ev.source_id, evidence=ev.evidence))
    return out


def match_embeddings(train_ids: list[str], train_emb: np.ndarray, eval_clips: list[dict], eval_emb: np.ndarray,
                     threshold: float, k: int = 4, index: IndexConfig | None = None) -> list[LeakMatch]:
    """Training clips within `threshold` cosine of an eval clip. eval_clips: dicts with clip_id, source,
    split, source_id (one per row of eval_emb)."""
    if len(train_ids) == 0 or len(eval_clips) == 0:
        return []
    idx = build_index(eval_emb, index)
    sims, ids = search(idx, train_emb, k)
    out = []
    for i, clip_id in enumerate(train_ids):
        for s, j in zip(sims[i], ids[i]):
            if j >= 0 and s >= threshold:
                e = eval_clips[j]
                out.append(LeakMatch(clip_id, "near_dup", e["source"], e["split"], str(e["source_id"]),
                                     e["clip_id"], round(float(s), 6), "manifest"))
    return out
