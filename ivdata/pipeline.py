"""Python API over the stages: one call per stage, and `build_corpus` for the whole chain.

    from ivdata.pipeline import build_corpus
    corpus = build_corpus("demo", ["videos/", "list.csv"], home=tmp, split="shots", cut="reencode",
                          short_side=256, fps=None, shard_maxcount=64, include_labels=False, workers=2)
    corpus.manifest_path, corpus.shard_list("all"), corpus.wids_index("all")

Every call is idempotent: rerunning it records only the work that is not recorded yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ivdata.corpus import Corpus
from ivdata.manifest import ManifestError
from ivdata.stages.base import StageStats, run_stage
from ivdata.links import refresh_links
from ivdata.stages.cut import CutConfig, CutStage
from ivdata.stages.images import ImageConfig, ImageStage
from ivdata.stages.ingest import IngestStage, expand_sources
from ivdata.stages.probe import ProbeStage
from ivdata.stages.shard import ShardConfig, ShardStage
from ivdata.stages.split import SplitConfig, SplitStage


def open_or_init(name: str, home: Path | None = None) -> Corpus:
    try:
        return Corpus.open(name, home=home)
    except ManifestError:
        if str(name).endswith(".duckdb"):
            raise
        return Corpus.init(name, home=home)


def ingest(corpus: Corpus, sources: Sequence[str], source: str | None = None, workers: int = 0,
           retry_failed: bool = False, media_root: str | Path | None = None, **kw) -> StageStats:
    return run_stage(IngestStage(corpus, expand_sources(sources, source, media_root), **kw), workers, retry_failed)


def probe(corpus: Corpus, workers: int = 0, retry_failed: bool = False) -> StageStats:
    return run_stage(ProbeStage(corpus), workers, retry_failed)


def images(corpus: Corpus, cfg: ImageConfig | None = None, workers: int = 0, retry_failed: bool = False) -> StageStats:
    return run_stage(ImageStage(corpus, cfg), workers, retry_failed, batch_size=64)   # small items: fewer commits


def split(corpus: Corpus, cfg: SplitConfig | None = None, workers: int = 0, retry_failed: bool = False) -> StageStats:
    stats = run_stage(SplitStage(corpus, cfg), workers, retry_failed)
    with corpus.manifest() as m:    # list captions and conversations of the new clips' spans
        stats.extra.update(refresh_links(m))
    return stats


def cut(corpus: Corpus, cfg: CutConfig | None = None, workers: int = 0, retry_failed: bool = False,
        allow_mixed: bool = False) -> StageStats:
    return run_stage(CutStage(corpus, cfg, allow_mixed), workers, retry_failed, batch_size=8)


def shard(corpus: Corpus, cfg: ShardConfig | None = None, workers: int = 0) -> StageStats:
    return run_stage(ShardStage(corpus, cfg), workers, batch_size=1)


def build_corpus(name: str, sources: Sequence[str | Path], home: Path | None = None, split: str = "whole",
                 cut: str = "reencode", short_side: int | None = None, fps: float | None = None,
                 shard_maxcount: int = 64, include_labels: bool = False, workers: int = 0,
                 source: str = "local", min_s: float = 2.0, max_s: float = 30.0, window_s: float = 10.0,
                 seed: int = 0, image_cfg: ImageConfig | None = None) -> Corpus:
    """ingest -> probe (videos) and images -> split -> cut -> shard (subset 'all'), creating the corpus if needed."""
    corpus = open_or_init(name, home)
    ingest(corpus, [str(s) for s in sources], source=source, workers=workers)
    probe(corpus, workers=workers)
    images(corpus, image_cfg, workers=workers)
    globals()["split"](corpus, SplitConfig(method=split, min_s=min_s, max_s=max_s, window_s=window_s, seed=seed),
                       workers=workers)
    globals()["cut"](corpus, CutConfig(mode=cut, short_side=short_side, fps=fps), workers=workers)
    shard(corpus, ShardConfig(subset="all", maxcount=shard_maxcount, include_labels=include_labels), workers=workers)
    return corpus
