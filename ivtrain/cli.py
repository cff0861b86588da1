"""Typer commands of the trainer; the top-level `iv` app mounts them as `iv train` and `iv eval probe`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ivtrain.config import ConfigError, load_recipe


def train(recipe: Path = typer.Argument(..., exists=True, dir_okay=False,
                                        help="recipe YAML, e.g. recipes/iv2_stage1_tiny.yaml"),
          set: list[str] = typer.Option([], "--set", help="dotted override key=value, repeatable (optim.lr=1e-3)"),
          nproc: int = typer.Option(1, "--nproc", min=1,
                                    help="processes on this machine; > 1 starts them with torchrun (gloo on CPU, "
                                         "nccl on CUDA)"),
          ) -> None:
    """Train (or resume) the recipe's objective; a rerun with the same train.out_dir resumes exactly.

    Several machines: run `torchrun --nnodes ... -m ivtrain.train RECIPE --set ...` (or the deepspeed
    launcher) on each; `--nproc N` is the one-machine shortcut for the same thing.
    """
    try:
        r = load_recipe(recipe, set)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="recipe/--set")
    if nproc > 1:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "ivtrain.train", str(recipe)] + [a for s in set for a in ("--set", s)]
        raise typer.Exit(subprocess.run(cmd).returncode)
    from ivtrain.train import run_recipe

    raise typer.Exit(run_recipe(r))


def models_tiny_assets(out: Path) -> dict[str, str]:
    """The training half of `iv models tiny`: every tiny model a tiny training recipe reads."""
    from ivtrain.objectives import write_tiny_assets

    return write_tiny_assets(out)


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


def convert(source: Path = typer.Argument(..., help="a finished run dir, or a checkpoint: released .pth (stage-1 or "
                                          "stage-2 layout), or safetensors in ivkit's layout"),
            out: Path = typer.Argument(..., help="output file (.pth with {'model': ...}, or .safetensors)"),
            to: str = typer.Option("ivkit", "--to", help="target layout: ivkit | stage1 | stage2"),
            ) -> None:
    """Convert InternVideo2 weights between layouts and print the key/shape summary."""
    from ivtrain.convert import ConversionError, detect_layout, from_ivkit, load_checkpoint, to_ivkit
    from ivtrain.export import ExportError

    try:
        sd = load_checkpoint(source)
        layout = detect_layout(sd)
        ivkit, unused = to_ivkit(sd, layout)
        target = from_ivkit(ivkit, to)
    except (ConversionError, ExportError) as e:
        raise typer.BadParameter(str(e), param_hint="source")
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in target.items()}, str(out))
    else:
        import torch

        torch.save({"model": target}, out)
    typer.echo(f"{source} ({layout}, {len(sd)} tensors) -> {out} ({to}, {len(target)} tensors); "
               f"{len(unused)} keys outside the video encoder dropped")


def convert_teacher(source: Path = typer.Argument(..., exists=True, dir_okay=False,
                                                  help="released checkpoint: InternVL-C (internvl_c_13b_224px.pth) "
                                                       "or VideoMAE V2 (pretraining `encoder.*` layout, or plain)"),
                    out: Path = typer.Argument(..., help="teacher directory to create"),
                    kind: str = typer.Option(..., "--kind", help="internvl-c | videomae-v2"),
                    set: list[str] = typer.Option([], "--set", help="architecture field key=value for another size "
                                                                   "than the released one (dim=64), repeatable"),
                    ) -> None:
    """Turn a released stage-1 teacher checkpoint into a teacher directory and print the key/shape report.

    internvl-c -> a semantic teacher dir (recipe: backend internvit); videomae-v2 -> a transformers VideoMAE dir
    (the motion teacher)."""
    from ivtrain.convert import ConversionError
    from ivtrain.models.released_teachers import convert_teacher as run

    try:
        converted = run(source, out, kind, set)
    except ConversionError as e:
        typer.echo(f"convert-teacher: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(str(converted.report))
    typer.echo(f"{source} ({kind}) -> {out}")
