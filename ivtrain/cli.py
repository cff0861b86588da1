"""Typer commands of the trainer (`iv train`, `iv convert`, `iv convert-teacher`, the training half of `iv models tiny`);
the commands on finished runs (evaluation, chat, exports) are in ivtrain/eval/cli.py."""
from __future__ import annotations

from pathlib import Path

import typer

from ivtrain.config import ConfigError, load_recipe


def train(recipe: Path = typer.Argument(..., exists=True, dir_okay=False,
                                        help="recipe YAML, e.g. recipes/iv2_stage1_tiny.yaml"),
          set: list[str] = typer.Option([], "--set", help="dotted override key=value, repeatable (optim.lr=1e-3)"),
          nproc: int = typer.Option(1, "--nproc", min=1,
                                    help="processes on this machine (one per GPU); > 1 or --nnodes > 1 starts them "
                                         "with torchrun (gloo on CPU, nccl on CUDA)"),
          nnodes: int = typer.Option(1, "--nnodes", min=1, help="machines in the job; run the same command on each"),
          node_rank: int = typer.Option(0, "--node-rank", min=0, help="this machine's number, 0 .. nnodes-1"),
          master_addr: str = typer.Option("127.0.0.1", "--master-addr",
                                          help="address of node 0, which every node can reach"),
          master_port: int = typer.Option(29500, "--master-port", help="a free port on node 0"),
          ) -> None:
    """Train (or resume) the recipe's objective; a rerun with the same train.out_dir resumes exactly, also on
    another number of processes or machines.

    Several machines: run the same command on each with --nnodes N --node-rank R --master-addr NODE0 (torchrun's
    static rendezvous); train.out_dir must be a folder every node sees (a shared file system), where rank 0
    writes the exports and every rank its checkpoint shard. The DeepSpeed launcher with a hostfile, or Slurm
    starting `python -m ivtrain.train` under torchrun, works the same way.
    """
    try:
        r = load_recipe(recipe, set)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="recipe/--set")
    if node_rank >= nnodes:
        raise typer.BadParameter(f"--node-rank {node_rank} is not below --nnodes {nnodes}")
    if nproc > 1 or nnodes > 1:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += (["--standalone"] if nnodes == 1 else
                ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master_addr", master_addr,
                 "--master_port", str(master_port)])
        cmd += ["-m", "ivtrain.train", str(recipe)] + [a for s in set for a in ("--set", s)]
        raise typer.Exit(subprocess.run(cmd).returncode)
    from ivtrain.train import run_recipe

    raise typer.Exit(run_recipe(r))


def models_tiny_assets(out: Path) -> dict[str, str]:
    """The training half of `iv models tiny`: every tiny model a tiny training recipe reads."""
    from ivtrain.objectives import write_tiny_assets

    return write_tiny_assets(out)


def convert(source: Path = typer.Argument(..., help="a finished run dir, or a checkpoint: released .pth (stage-1 or "
                                          "stage-2 layout), or safetensors in ivkit's layout"),
            out: Path = typer.Argument(..., help="output file (.pth with {'model': ...}, or .safetensors)"),
            to: str = typer.Option("ivkit", "--to", help="target layout: ivkit | stage1 | stage2"),
            ) -> None:
    """Convert InternVideo2 weights between layouts and print the key/shape summary."""
    from ivtrain.convert import ConversionError, detect_layout, from_ivkit, load_checkpoint, to_ivkit
    from ivtrain.export import ExportError, load_artifact, read_export

    try:
        if to == "stage2" and source.is_dir() and "stage2" in read_export(source)["artifacts"]:
            # a stage-2 run: its whole model, already in the released layout
            sd = target = load_artifact(source, "stage2")
            layout, unused = "stage2", []
        else:
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
               f"{len(unused)} keys outside the {'model' if target is sd else 'video encoder'} dropped")


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
