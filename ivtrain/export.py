"""A finished run's artifacts, and the encoder every evaluation reads out of any objective's run.

`train.out_dir` receives, at the end of a run, one safetensors file per artifact the objective exports
(`<name>.safetensors`) and `export.json`:
    {"objective": "iv2_stage1", "artifacts": {"encoder": "encoder.safetensors", ...}, "encoder": {...}}
where "encoder" is the vision tower's configuration (ivtrain.models.vit.InternVideo2.config: sizes, pooling heads,
activation, frames, resolution), so the probe, `iv convert`, feature export and later stages rebuild the tower
without the objective or its teachers. The "encoder" artifact holds that tower's weights under its own names.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

EXPORT = "export.json"


class ExportError(FileNotFoundError):
    """A run directory holds no usable export."""


def write_export(out_dir: str | Path, objective: str, artifacts: dict[str, dict[str, torch.Tensor]],
                 encoder_config: dict, extra: dict | None = None) -> Path:
    """extra: more keys of export.json (an exported stage-3 model's `chat`: where its LLM and QFormer lie)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    files = {}
    for name, sd in artifacts.items():
        files[name] = f"{name}.safetensors"
        tmp = out_dir / f".{name}.safetensors.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(tmp))
        tmp.replace(out_dir / files[name])
    meta = {"objective": objective, "artifacts": files, "encoder": encoder_config, **(extra or {})}
    (out_dir / EXPORT).write_text(json.dumps(meta, indent=2))   # last: its presence means the files are whole
    return out_dir / EXPORT


def read_export(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / EXPORT
    if not path.is_file():
        raise ExportError(f"{run_dir} holds no {EXPORT}: not a finished run (or one with train.export=false)")
    return json.loads(path.read_text())


def load_artifact(run_dir: str | Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    meta = read_export(run_dir)
    if name not in meta["artifacts"]:
        raise ExportError(f"{run_dir}: the {meta['objective']} export has no {name!r} artifact "
                          f"(it has {', '.join(meta['artifacts'])})")
    return load_file(str(Path(run_dir) / meta["artifacts"][name]))


def encoder_grid(config: dict) -> tuple[int, int, int]:
    """The (T, H, W) token grid of an encoder configuration."""
    side = config["img_size"] // config["patch_size"]
    return config["num_frames"] // config["tubelet_size"], side, side


def load_encoder(run_dir: str | Path, **overrides):
    """(the run's vision tower with its trained weights, in eval mode; its configuration). overrides change the
    rebuilt configuration (attn_backend, checkpoint_activations, or num_frames / img_size: the position table is
    then resized to the new grid)."""
    from ivtrain.models.towers import load_vision_tower
    from ivtrain.models.vit import encoder_from_config

    meta = read_export(run_dir)
    config = meta["encoder"]
    encoder = encoder_from_config(config, **overrides)
    load_vision_tower(encoder, load_artifact(run_dir, "encoder"), source_grid=encoder_grid(config))
    return encoder.eval(), {**config, **overrides}
