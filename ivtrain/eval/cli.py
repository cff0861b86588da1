"""Typer commands on finished runs, mounted by the top-level `iv` app: `iv eval probe|recon|retrieval`, `iv chat`,
`iv export features|model`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ivtrain.config import ConfigError, load_recipe


def probe(train_shards: str = typer.Argument(..., help="labeled shards to fit the probe (.wids.json, .txt, dir)"),
          eval_shards: str = typer.Argument(..., help="labeled shards to score it"),
          run: Optional[Path] = typer.Option(None, "--run", help="finished training run dir of any objective "
                                             "(export.json + encoder.safetensors)"),
          recipe: Optional[Path] = typer.Option(None, "--recipe", help="with --random-init: the recipe whose encoder to "
                                                "build (or --run with --random-init: that run's architecture)"),
          set: list[str] = typer.Option([], "--set", help="overrides for --recipe"),
          random_init: bool = typer.Option(False, "--random-init", help="probe a randomly initialized encoder (baseline)"),
          epochs: int = typer.Option(100, help="probe training epochs (with --features stream, one encoder pass each)"),
          lr: float = typer.Option(1e-3),
          seed: int = typer.Option(0),
          device: str = typer.Option("auto", help="auto (CUDA when present, bf16 autocast) | cpu | cuda"),
          batch_size: int = typer.Option(8, "--batch-size", help="clips per encoder forward when caching"),
          features: str = typer.Option("auto", help="cache: encode each set once and keep every token in memory; "
                                       "stream: encode each minibatch afresh (one batch in memory, one encoder "
                                       "pass per epoch); auto: cache when it fits in half the free memory"),
          cache_dtype: str = typer.Option("float32", "--cache-dtype", help="float32 | bfloat16 | float16: the "
                                          "cached tokens' type (bfloat16 halves the cache)"),
          out: Optional[Path] = typer.Option(None, "--out", help="write the result as JSON here"),
          ) -> None:
    """Attentive probe (frozen encoder + attention pooling + linear classifier) on labeled shards."""
    from ivtrain.eval.probe import run_probe

    if run is None and recipe is None:
        raise typer.BadParameter("give --run DIR, or --recipe with --random-init")
    try:
        r = load_recipe(recipe, set) if recipe is not None else None
        result = run_probe(train_shards, eval_shards, run_dir=run, recipe=r, random_init=random_init,
                           epochs=epochs, lr=lr, seed=seed, device=device, batch_size=batch_size,
                           features=features, cache_dtype=cache_dtype)
    except (ValueError, FileNotFoundError) as e:  # bad options, unlabeled shards, unknown labels, no export
        typer.echo(f"probe error: {e}", err=True)
        raise typer.Exit(2)
    text = json.dumps(result.to_dict(), indent=2)
    typer.echo(text)
    if out is not None:
        out.write_text(text)


def recon(run: Path = typer.Argument(..., help="finished InternVideo-Next stage-1 run dir (recipe.json + export)"),
          shards: str = typer.Argument(..., help="shards to reconstruct clips of (.wids.json, .txt, dir)"),
          out: Path = typer.Option(..., "--out", help="the PNG grid to write"),
          clips: int = typer.Option(4, min=1, help="clips to reconstruct (the first ones, centre crop)"),
          steps: Optional[int] = typer.Option(None, min=1, help="DDPM steps, evenly respaced (default: all of the "
                                              "training schedule's)"),
          seed: int = typer.Option(0),
          temperature: float = typer.Option(1.0, min=0.0, help="scale of each step's fresh noise (0: the chain's mean "
                                            "path)"),
          clip: bool = typer.Option(True, "--clip/--no-clip", help="clamp each step's estimate of the pixels to the "
                                    "range pixels can take"),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          random_init: bool = typer.Option(False, "--random-init", help="the run's architecture untrained (baseline)"),
          ) -> None:
    """DDPM reconstruction of the hidden patches: a PNG per clip (frames, mask, reconstruction), MSE vs mean-fill."""
    from ivtrain.eval.recon import run_recon
    from ivtrain.export import ExportError

    try:
        result = run_recon(run, shards, out, clips=clips, steps=steps, seed=seed, device=device,
                           random_init=random_init, temperature=temperature, clip=clip)
    except (ValueError, FileNotFoundError, ExportError, ConfigError) as e:
        typer.echo(f"recon error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(result, indent=2))


def retrieval(run: Path = typer.Argument(..., help="a finished stage-2 run directory (recipe.json, export.json)"),
              shards: str = typer.Argument(..., help="captioned clips (.wids.json, .txt, dir): one caption each"),
              k_test: int = typer.Option(128, "--k-test", min=1, help="re-rank each query's top k by the matching head"),
              no_rerank: bool = typer.Option(False, "--no-rerank", help="dual-encoder scores only"),
              audio: bool = typer.Option(False, "--audio", help="clips as audio + video (av_fusion; avtm_head)"),
              captions: str = typer.Option("", "--captions", help="caption kinds by preference, e.g. V,web "
                                           "(default: what the run's VTC read, AVTC's with --audio)"),
              init: bool = typer.Option(False, "--init", help="the model as the run's recipe initializes it "
                                        "(baseline), not the trained one"),
              batch_size: int = typer.Option(8, "--batch-size", min=1),
              device: str = typer.Option("auto", help="auto | cpu | cuda"),
              out: Optional[Path] = typer.Option(None, "--out", help="write the result as JSON here"),
              ) -> None:
    """Zero-shot retrieval: text -> video and video -> text R@1/5/10 and median rank, re-ranked as released."""
    from ivtrain.eval.retrieval import run_retrieval

    try:
        result = run_retrieval(run, shards, k_test=k_test, do_rerank=not no_rerank, audio=audio,
                               caption_kinds=tuple(k for k in captions.split(",") if k), batch_size=batch_size,
                               device=device, init=init)
    except (ValueError, FileNotFoundError) as e:   # not a stage-2 run, no captions, bad options
        typer.echo(f"retrieval error: {e}", err=True)
        raise typer.Exit(2)
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if out is not None:
        out.write_text(text)


def export_features(run: Path = typer.Argument(..., help="a finished run dir of any objective (export.json + "
                                               "encoder.safetensors), or a checkpoint file with --size"),
                    source: str = typer.Argument(..., help="shards (.wids.json, .txt of tars, dir of tars, .tar), or "
                                                 "videos (a file, a dir, a .txt of paths, a .csv/.parquet/.jsonl "
                                                 "with path and video_id columns)"),
                    out: Path = typer.Option(..., "--out", help="output folder (rerun with it to resume)"),
                    layers: str = typer.Option("-1", "--layers", help="block indices from 0, negative from the "
                                               "last: 7,-1"),
                    pool: str = typer.Option("mean", "--pool", help="tokens | frames | mean | attn (the encoder's "
                                             "pooling head; last layer only)"),
                    window: Optional[int] = typer.Option(None, "--window", help="source frames per window (default: "
                                                         "each clip or video is one window)"),
                    stride: Optional[str] = typer.Option(None, "--stride", help="between windows: frames (16) or "
                                                         "seconds (0.5s); default the window"),
                    format: str = typer.Option("safetensors", "--format", help="safetensors | npy | actionformer "
                                               "(one [T, C] .npy per video)"),
                    dtype: str = typer.Option("float32", "--dtype", help="stored features: float32 | float16"),
                    batch_size: int = typer.Option(8, "--batch-size", help="windows per encoder forward"),
                    workers: int = typer.Option(2, "--workers", help="decoding processes (0: in this one)"),
                    device: str = typer.Option("auto", help="auto (CUDA when present, bf16 autocast) | cpu | cuda"),
                    size: Optional[str] = typer.Option(None, "--size", help="checkpoint file: its ViT size "
                                                       "(b, l, 1b, 6b)"),
                    frames: int = typer.Option(0, "--frames", help="frames per window the encoder sees (default: "
                                               "the run's; another count resizes its position table)"),
                    retry_failed: bool = typer.Option(False, "--retry-failed", help="redo items recorded as failed"),
                    ) -> None:
    """Export an encoder's features (chosen layers; per token, per frame or pooled) of clips or of sliding
    windows over untrimmed videos, with a Parquet index DuckDB reads; resumable."""
    from ivtrain.convert import ConversionError
    from ivtrain.eval.features import ExportOptions
    from ivtrain.eval.features import export_features as run_export

    options = ExportOptions(layers=layers, pool=pool, window=window, stride=stride, format=format, dtype=dtype,
                            batch_size=batch_size, workers=workers, device=device, retry_failed=retry_failed)
    try:
        summary = run_export(run, source, out, options, size=size, frames=frames)
    except (ValueError, FileNotFoundError, ConversionError, RuntimeError) as e:   # ExportError is a FileNotFoundError
        typer.echo(f"export features: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(summary.line())


def _quiet_transformers() -> None:
    """No weight-loading progress bars or load reports between a chat's question and its answer."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def chat(run: Path = typer.Argument(..., help="a finished iv2_stage3 run dir, or what `iv export model` wrote"),
         question: Optional[str] = typer.Argument(None, help="the question; none: ask questions one by one "
                                                  "(an empty line or end of input ends the chat)"),
         video: Optional[Path] = typer.Option(None, "--video", help="a video file"),
         image: Optional[Path] = typer.Option(None, "--image", help="an image file"),
         system: str = typer.Option("", "--system", help="a system message before the question"),
         max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
         sample: bool = typer.Option(False, "--sample/--greedy", help="sample the answer (default: greedy)"),
         temperature: float = typer.Option(0.7, "--temperature", min=0.0),
         top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0),
         seed: int = typer.Option(0, "--seed"),
         device: str = typer.Option("auto", help="auto (CUDA when present, bf16 autocast) | cpu | cuda"),
         ) -> None:
    """Answer questions about a video (or an image) with a stage-3 model: frames sampled as in training, the
    question rendered by the LLM's chat template, the answer generated (greedy, or sampled with --sample)."""
    from ivtrain.eval.chat import ChatError, Generation, answer, load_chat_model, media_views

    if (video is None) == (image is None):
        typer.echo("chat: give one of --video PATH and --image PATH", err=True)
        raise typer.Exit(2)
    _quiet_transformers()
    gen = Generation(max_new_tokens, sample, temperature, top_p, seed)
    try:
        model = load_chat_model(run, device)
        model.system = system
        views = media_views(model, video or image, image is not None)
        if question is not None:
            typer.echo(answer(model, views, image is not None, question, gen))
            return
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if not line:
                break
            typer.echo(answer(model, views, image is not None, line, gen))
    except ChatError as e:
        typer.echo(f"chat: {e}", err=True)
        raise typer.Exit(2)


def export_model(run: Path = typer.Argument(..., help="a finished iv2_stage3 run dir"),
                 out: Path = typer.Argument(..., help="folder to create"),
                 merge_lora: bool = typer.Option(False, "--merge-lora", help="write the LLM with the adapters "
                                                 "folded in (OUT/llm, loads with plain transformers); otherwise "
                                                 "the adapters as a peft directory (OUT/lora) over the run's LLM"),
                 ) -> None:
    """Write a stage-3 run as a directory that stands alone: vision tower and bridge (safetensors), the QFormer's
    config and tokenizer, and the LLM (adapters merged with --merge-lora); `iv chat OUT` reads it."""
    from ivtrain.eval.chat import ChatError, export_model as run_export

    _quiet_transformers()
    try:
        typer.echo(run_export(run, out, merge_lora))
    except ChatError as e:
        typer.echo(f"export model: {e}", err=True)
        raise typer.Exit(2)
