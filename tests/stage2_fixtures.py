"""Runs for the stage-2 tests that need no training: a tiny stage-1 run's export and a tiny stage-2 run's export (with
its recipe.json), each written by the function the engine calls at the end of a run, from a freshly built objective."""
from __future__ import annotations

import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def write_stage1_export(out: Path, assets: Path) -> Path:
    from ivtrain.config import load_recipe
    from ivtrain.export import write_export
    from ivtrain.objectives.iv2_stage1 import IV2Stage1

    recipe = load_recipe(ROOT / "recipes" / "iv2_stage1_tiny.yaml", [f"assets={assets}"])
    torch.manual_seed(0)
    stage1 = IV2Stage1(recipe, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    write_export(out, stage1.name, stage1.export(stage1.trainable.state_dict()), stage1.encoder_config())
    return out


def stage2_recipe(assets: Path, stage1: Path | str, shards: str = "unused.wids.json", audio: bool = False,
                  **section) -> dict:
    """The tiny stage-2 recipe as a mapping: vision from `stage1`, the tiny BERT, with `audio` the tiny BEATs and
    the audio-visual losses on every source."""
    cfg = {"vision": {"init": str(stage1), "model": {"size": "tiny", "image_pos_embed": True}},
           "text": {"path": str(assets / "tiny_bert"), "fusion_layer": 2, "max_length": 16}, "embed_dim": 32}
    if audio:
        cfg.update(audio={"path": str(assets / "tiny_beats"), "seconds": 2.0, "num_mel_bins": 64}, av_concat_dim=48,
                   loss={"avtc": 1.0, "avtm": 1.0, "avmlm": 1.0},
                   sources={"default": ["vtc", "vtm", "mlm", "avtc", "avtm", "avmlm"]})
    cfg.update(section)
    return {"objective": "iv2_stage2", "assets": str(assets),
            "data": {"shards": str(shards), "image_size": 32, "num_frames": 4, "batch_size": 4, "num_workers": 1,
                     "index_cache": "off"},
            "iv2_stage2": cfg, "optim": {"lr": 2e-3, "warmup_steps": 2}, "train": {"steps": 6, "tensorboard": False}}


def write_stage2_export(out: Path, raw: dict, seed: int = 0) -> Path:
    """A stage-2 run directory (recipe.json, export.json, encoder and stage2 safetensors) of the model as the
    objective builds it from `raw` under `seed`."""
    from ivtrain.config import build_recipe, to_dict
    from ivtrain.export import write_export
    from ivtrain.objectives.iv2_stage2 import IV2Stage2

    recipe = build_recipe(raw)
    torch.manual_seed(seed)
    stage2 = IV2Stage2(recipe, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2))
    write_export(out, stage2.name, stage2.export(stage2.trainable.state_dict()), stage2.encoder_config())
    return out
