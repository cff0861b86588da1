"""Curation commands as plain typer-annotated functions; the `iv` app mounts them:

    iv data kmash RECIPE        plan a KMash mix over annotation files on disk, report what is missing, build it
    iv data dedupe              exact + near-duplicate removal and eval-split leakage, with an audit trail
    iv data score               clip-caption similarity, aesthetic and motion scores
    iv data select-internvid2   InternVid2 FLT (top-k by similarity) and DIV (1/#clips per video) subsets
    iv corpus report            HTML page: gallery (clips, images, conversations), plots, audit tables

`mount(data_app, corpus_app)` registers them under those names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ivdata.cliutil import (CorpusOpt, ExecutorOpt, RayAddressOpt, WorkersOpt, console, fail, open_corpus, refusals,
                            report_stats, run_on)

def kmash(recipe: Path = typer.Argument(..., exists=True, dir_okay=False, help="KMash recipe YAML."),
          corpus: str = CorpusOpt,
          data_root: Optional[Path] = typer.Option(None, help="Folder the recipe's paths are relative to."),
          scale: float = typer.Option(1.0, help="Multiply every quota (e.g. 0.001 for a trial run)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Only plan and report; ingest nothing."),
          strict: bool = typer.Option(False, help="Fail when a file is missing or a quota cannot be met."),
          short_side: Optional[int] = typer.Option(None, help="Resize clips to this short side when cutting."),
          plan_out: Optional[Path] = typer.Option(None, help="Write the plan summary (JSON) here."),
          workers: int = WorkersOpt, executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt):
    """Plan a KMash mix from annotation files, report what is missing on disk, then build the corpus."""
    from ivdata.curate.kmash import format_plan, load_recipe, plan_kmash
    from ivdata.curate.sources import SourceFormatError
    from ivkit.typed_yaml import ConfigError
    try:
        rcp = load_recipe(recipe)
        plan = plan_kmash(rcp, data_root, scale)
    except (ConfigError, SourceFormatError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(format_plan(plan))
    if plan_out:
        plan_out.write_text(json.dumps(plan.summary(), indent=1))
    if strict and not plan.complete:
        fail("the plan is incomplete (missing annotation files or quotas not met); see above")
    if dry_run:
        return
    from ivdata.kmash_build import build_kmash
    from ivdata.pipeline import open_or_init
    from ivdata.stages.cut import CutConfig
    result = build_kmash(open_or_init(corpus), rcp, plan, workers=run_on(executor, workers, ray_address),
                         cut_cfg=CutConfig(mode="reencode", short_side=short_side))
    console.print(f"subset [bold]{result['subset']}[/]: {result['clips']} clips {result['per_source']}")
    for f in result["failed"][:20]:
        console.print(f"[yellow]failed[/] {f['source']} {f['source_id']}: {f['error']}")


def dedupe(corpus: str = CorpusOpt,
           embedder: str = typer.Option("thumb", help="thumb[:SIDE] (model-free), hf:MODEL_DIR (transformers CLIP/SigLIP) or openclip:MODEL_DIR."),
           threshold: float = typer.Option(0.9, help="Cosine similarity at or above which clips are near-duplicates."),
           leakage_threshold: Optional[float] = typer.Option(None, help="Cosine for eval leakage (default: --threshold)."),
           eval_annotations: List[str] = typer.Option([], "--eval", help="FORMAT[:SOURCE]:PATH of a val/test list, "
                                                      "e.g. kinetics:k400:/data/k400/validate.csv (repeatable)."),
           methods: str = typer.Option("source_id,sha256,near_dup,leakage", help="Comma-separated methods."),
           index: str = typer.Option("auto", help="faiss index: auto | flat | ivf | hnsw."),
           source_order: str = typer.Option("", help="Comma-separated sources to prefer when keeping one copy."),
           subset: str = typer.Option("deduped", help="Subset of the training clips every method kept."),
           workers: int = WorkersOpt, executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt):
    """Remove exact and near-duplicates and eval-split leaks; record every decision with its evidence."""
    from ivdata.curate.ann import IndexConfig
    from ivdata.stages.base import run_stage
    from ivdata.stages.dedupe import DedupeConfig, DedupeStage, dedupe_report
    try:
        cfg = DedupeConfig(embedder=embedder, near_dup_threshold=threshold, leakage_threshold=leakage_threshold,
                           eval_annotations=list(eval_annotations),
                           methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                           index=IndexConfig(kind=index), subset=subset,
                           source_order=[s for s in source_order.split(",") if s])
    except ValueError as e:
        fail(str(e))
    from ivdata.curate.sources import SourceFormatError
    c = open_corpus(corpus)
    try:
        report_stats("dedupe", run_stage(DedupeStage(c, cfg), run_on(executor, workers, ray_address)))
    except SourceFormatError as e:        # a malformed --eval annotation file, found when it is read
        fail(str(e))
    with c.manifest(read_only=True) as m:
        console.print(json.dumps(dedupe_report(m), indent=1))


def score(corpus: str = CorpusOpt,
          recipe: Optional[Path] = typer.Option(None, exists=True, help="Take the `score:` block of an InternVid2 recipe."),
          metrics: Optional[str] = typer.Option(None, help="Comma-separated: motion, aesthetic, clip_text_sim, text_overlay."),
          model_dir: Optional[Path] = typer.Option(None, help="CLIP / SigLIP directory (transformers, or an open_clip export)."),
          aesthetic_head: Optional[Path] = typer.Option(None, help="Aesthetic head weights (.safetensors / .pt)."),
          workers: int = WorkersOpt, executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt):
    """Score clips: clip-caption similarity, aesthetic, motion (-> the scores table)."""
    from ivdata.stages.base import run_stage
    from ivdata.stages.score import ScoreConfig, ScoreStage
    from ivkit.typed_yaml import ConfigError, build
    fields: dict = {}
    if recipe:
        from ivdata.curate.internvid2 import load_recipe
        try:
            fields.update(load_recipe(recipe).score)
        except ConfigError as e:
            fail(str(e))
    if metrics:
        fields["metrics"] = [m.strip() for m in metrics.split(",") if m.strip()]
    if model_dir:
        fields["model_dir"] = str(model_dir)
    if aesthetic_head:
        fields["aesthetic_head"] = str(aesthetic_head)
    try:
        cfg = build(ScoreConfig, fields, "score")
    except ConfigError as e:
        fail(str(e))
    with refusals():
        report_stats("score", run_stage(ScoreStage(open_corpus(corpus), cfg), run_on(executor, workers, ray_address)))


def select_internvid2(recipe: Path = typer.Argument(..., exists=True, help="InternVid2 recipe YAML."),
                      corpus: str = CorpusOpt):
    """Write the recipe's FLT / DIV subsets (rules + top-k by similarity, diversity sampling)."""
    from ivdata.curate.internvid2 import load_recipe, select
    try:
        rcp = load_recipe(recipe)
    except ValueError as e:
        fail(str(e))
    with open_corpus(corpus).manifest() as m:
        for name, n in select(m, rcp).items():
            console.print(f"subset [bold]{name}[/]: {n} clips")


def report(corpus: str = CorpusOpt,
           out: Optional[Path] = typer.Option(None, help="Output folder (default: <corpus root>/report).")):
    """Write an HTML report of a corpus: a gallery of its clips, images and conversations with their captions,
    plots, and the dedup and leakage audit."""
    from ivdata.curate.report import write_report
    c = open_corpus(corpus)
    page = write_report(c.manifest_path, out or c.root / "report", title=c.name)
    console.print(f"report: {page}")


def mount(data_app: typer.Typer, corpus_app: typer.Typer) -> None:
    data_app.command("kmash")(kmash)
    data_app.command("dedupe")(dedupe)
    data_app.command("score")(score)
    data_app.command("select-internvid2")(select_internvid2)
    corpus_app.command("report")(report)
