"""The curation part of `make demo`: dedupe (with leakage checks), motion scores and the report.

    from ivdata.curate_demo import curate_and_report
    page = curate_and_report(corpus)          # -> <corpus root>/report/index.html

Model-free on purpose (thumbnail embeddings, optical-flow motion), so the demo runs anywhere; pass
`model_dir` (a CLIP/SigLIP directory) to add clip-caption similarity for captioned clips.
"""
from __future__ import annotations

from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.curate.report import write_report
from ivdata.stages.base import run_stage
from ivdata.stages.dedupe import DedupeConfig, DedupeStage
from ivdata.stages.score import ScoreConfig, ScoreStage


def curate_and_report(corpus: Corpus, eval_annotations: list[str] | None = None, model_dir: str | None = None,
                      out: Path | None = None, workers: int = 0) -> Path:
    run_stage(DedupeStage(corpus, DedupeConfig(eval_annotations=list(eval_annotations or []))), workers)
    metrics = ("motion", "clip_text_sim") if model_dir else ("motion",)
    run_stage(ScoreStage(corpus, ScoreConfig(metrics=metrics, model_dir=model_dir)), workers)
    return write_report(corpus.manifest_path, out or corpus.root / "report", title=corpus.name)
