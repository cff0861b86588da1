"""Exact and near-duplicate clusters, with a kept representative and the evidence for every removal.

Three kinds of duplicate, each its own `method` in the manifest's `dedup` table:
  source_id  the same underlying video listed by two datasets (e.g. one YouTube id in Kinetics and
             ActivityNet): every clip of the non-kept video is removed and points at the kept video's
             clip nearest in time.
  sha256     byte-identical files: videos with one content hash, and clips with one content hash.
  near_dup   clips whose embeddings have cosine similarity >= a threshold (re-encodes, resizes, trims,
             re-uploads), clustered as connected components of the similar pairs.
In each cluster one clip is kept: the best by `priority` (higher resolution, then longer, then source
order, then id), so reruns keep the same one. Every clip examined gets a row: kept, its cluster, and
for a removed clip the kept clip it duplicates with their similarity, so a reviewer can audit each one.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ivdata.curate.ann import IndexConfig, similar_pairs


@dataclass
class ClipFacts:
    """What dedup needs to know about one clip (read from the manifest's clip_info view)."""
    clip_id: str
    video_id: str
    source: str
    source_key: str | None = None   # id_namespace:source_id of its video
    video_sha256: str | None = None
    sha256: str | None = None       # the clip file's hash
    start_s: float = 0.0
    duration_s: float = 0.0
    width: int = 0
    height: int = 0


@dataclass
class DedupDecision:
    clip_id: str
    method: str
    cluster_id: str | None
    kept: bool
    matched_clip_id: str | None
    similarity: float | None

    def row(self) -> dict:
        return dict(clip_id=self.clip_id, method=self.method, cluster_id=self.cluster_id, kept=self.kept,
                    matched_clip_id=self.matched_clip_id, similarity=self.similarity)


def default_priority(source_order: Iterable[str] = ()) -> Callable[[ClipFacts], tuple]:
    """Sort key, smaller = better: more pixels, longer, earlier listed source, then id (stable)."""
    rank = {s: i for i, s in enumerate(source_order)}
    return lambda c: (-(c.width or 0) * (c.height or 0), -(c.duration_s or 0.0), rank.get(c.source, len(rank)),
                      c.clip_id)


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _video_groups(clips: list[ClipFacts], key: Callable[[ClipFacts], str | None], method: str,
                  priority) -> list[DedupDecision]:
    """Videos sharing `key` form a cluster; the kept video is the one holding the best clip."""
    by_video: dict[str, list[ClipFacts]] = defaultdict(list)
    for c in clips:
        by_video[c.video_id].append(c)
    by_key: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        k = key(c)
        if k:
            by_key[k].add(c.video_id)
    out = []
    decided: set[str] = set()
    for k, vids in sorted(by_key.items()):
        if len(vids) < 2:
            continue
        members = [c for v in vids for c in by_video[v]]
        best = min(members, key=priority)
        kept_clips = by_video[best.video_id]
        for c in members:
            if c.video_id == best.video_id:
                out.append(DedupDecision(c.clip_id, method, f"{method}:{k}", True, None, None))
            else:
                match = min(kept_clips, key=lambda kc: (abs(kc.start_s - c.start_s), kc.clip_id))
                out.append(DedupDecision(c.clip_id, method, f"{method}:{k}", False, match.clip_id, 1.0))
            decided.add(c.clip_id)
    out += [DedupDecision(c.clip_id, method, None, True, None, None) for c in clips if c.clip_id not in decided]
    return out


def source_id_duplicates(clips: list[ClipFacts], priority) -> list[DedupDecision]:
    """One video under two datasets: same id namespace and id, different manifest videos."""
    return _video_groups(clips, lambda c: c.source_key, "source_id", priority)


def sha256_duplicates(clips: list[ClipFacts], priority) -> list[DedupDecision]:
    """Byte-identical videos (same content hash), then byte-identical clip files among the rest."""
    video_level = _video_groups(clips, lambda c: c.video_sha256, "sha256", priority)
    removed = {d.clip_id for d in video_level if not d.kept}
    by_hash: dict[str, list[ClipFacts]] = defaultdict(list)
    for c in clips:
        if c.sha256 and c.clip_id not in removed:
            by_hash[c.sha256].append(c)
    clip_level = {}
    for h, group in by_hash.items():
        if len(group) < 2 or len({c.video_id for c in group}) < 2:
            continue
        best = min(group, key=priority)
        for c in group:
            clip_level[c.clip_id] = DedupDecision(c.clip_id, "sha256", f"sha256:{h}", c is best,
                                                  None if c is best else best.clip_id, None if c is best else 1.0)
    return [clip_level.get(d.clip_id, d) if d.kept else d for d in video_level]


def near_duplicates(clips: list[ClipFacts], emb: np.ndarray, threshold: float, priority, k: int = 16,
                    index: IndexConfig | None = None) -> tuple[list[DedupDecision], list[tuple[int, int, float]]]:
    """Clusters of clips whose embeddings are within `threshold` cosine similarity (connected components).

    Returns the decisions and the similar pairs found (the evidence).
    """
    if len(clips) != len(emb):
        raise ValueError(f"{len(clips)} clips but {len(emb)} embeddings")
    pairs = similar_pairs(emb, threshold, k=k, cfg=index)
    uf = UnionFind(len(clips))
    for a, b, _ in pairs:
        uf.union(a, b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(clips)):
        groups[uf.find(i)].append(i)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(DedupDecision(clips[members[0]].clip_id, "near_dup", None, True, None, None))
            continue
        best = min(members, key=lambda i: priority(clips[i]))
        cid = f"near_dup:{clips[best].clip_id}"
        for i in members:
            if i == best:
                out.append(DedupDecision(clips[i].clip_id, "near_dup", cid, True, None, None))
            else:
                sim = float(np.dot(emb[i], emb[best]))
                out.append(DedupDecision(clips[i].clip_id, "near_dup", cid, False, clips[best].clip_id, round(sim, 6)))
    return out, pairs
