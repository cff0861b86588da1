"""Build a corpus from a KMash plan: ingest the drawn rows with their provenance, then clip and shard.

ingest     one videos row per (dataset, video id); extra = id_namespace, annotation file and line,
           recipe, mix source (and any dataset-specific fields); the annotated span goes to `spans`.
probe      as for any corpus.
spans      a row without a span (SSv2, MiT, whole videos) gets the whole file as its span; a
           Kinetics-style trimmed file gets [0, end - start] (the file is the span) and keeps the
           original YouTube-time span in extra.source_span.
split      method 'spans': one clip per annotated span, as the mix defines its units.
cut, shard the subset named after the recipe; labels stay out of shards unless the recipe says so.
"""
from __future__ import annotations

import re

from ivdata.corpus import Corpus
from ivdata.curate.kmash import KMashPlan, KMashRecipe
from ivdata.pipeline import cut, probe, shard, split
from ivdata.stages.base import run_stage
from ivdata.stages.cut import CutConfig
from ivdata.stages.ingest import IngestStage
from ivdata.stages.shard import ShardConfig
from ivdata.stages.split import SplitConfig


def subset_name(recipe_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", recipe_name)


def ingest_rows(plan: KMashPlan) -> list[dict]:
    """The plan's rows as ingest rows (path, source, source_id, label, split, start, end, extras)."""
    out = []
    for r in plan.rows:
        if not r.get("path"):
            continue
        row = {k: v for k, v in r.items() if k != "file_is_span"}
        if r.get("file_is_span"):
            row["source_span"] = [r["start"], r["end"]]
            row["start"], row["end"] = 0.0, round(r["end"] - r["start"], 3)
        out.append(row)
    return out


def build_kmash(corpus: Corpus, recipe: KMashRecipe, plan: KMashPlan, workers: int = 0,
                cut_cfg: CutConfig | None = None, shard_maxcount: int = 1000, do_shard: bool = True) -> dict:
    rows = ingest_rows(plan)
    run_stage(IngestStage(corpus, rows), workers)
    probe(corpus, workers=workers)
    with corpus.manifest() as m:
        # Whole-file span for the recipe's videos that have none (so split 'spans' makes one clip).
        m.execute("""
            INSERT OR IGNORE INTO spans
            SELECT v.video_id, 0.0, v.duration_s, v.label FROM videos v
            WHERE v.status = 'probed' AND json_extract_string(v.extra, '$.recipe') = ?
              AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.video_id = v.video_id)""", [recipe.name])
    split(corpus, SplitConfig(method="spans"), workers=workers)
    cut(corpus, cut_cfg or CutConfig(mode="reencode"), workers=workers)
    name = subset_name(recipe.name)
    with corpus.manifest() as m:
        quoted = recipe.name.replace("'", "''")
        n = m.select_subset(name, sql="SELECT c.clip_id FROM clips c JOIN videos v USING (video_id) "
                                      f"WHERE c.status = 'ok' AND json_extract_string(v.extra, '$.recipe') = '{quoted}'")
        per_source = {r["mix_source"]: r["n"] for r in m.rows(
            "SELECT json_extract_string(v.extra, '$.mix_source') AS mix_source, count(*) AS n "
            "FROM subsets s JOIN clips c USING (clip_id) JOIN videos v USING (video_id) WHERE s.name = ? "
            "GROUP BY ALL ORDER BY ALL", [name])}
        failed = m.rows("SELECT v.source, v.source_id, coalesce(v.error, c.error) AS error FROM videos v "
                        "LEFT JOIN clips c USING (video_id) WHERE json_extract_string(v.extra, '$.recipe') = ? "
                        "AND (v.status = 'failed' OR c.status = 'failed')", [recipe.name])
    if do_shard and n:
        shard(corpus, ShardConfig(subset=name, maxcount=shard_maxcount, include_labels=recipe.include_labels),
              workers=workers)
    return {"subset": name, "clips": n, "per_source": per_source, "failed": failed}
