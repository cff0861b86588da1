"""`iv train` on InternVideo-Next stage 1 end to end on CPU (real shards of real mp4s, the tiny teacher and
ModernBERT, DeepSpeed): exact resume after a SIGKILL, bad predictor directories refused before any step, and
`iv eval recon` on the finished run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import train_synthetic  # noqa: E402
from test_train_engine import build_shards, child_env, losses, run  # noqa: E402

from ivtrain.objectives.next_stage1 import NextStage1  # noqa: E402

RECIPE = "recipes/next_stage1_tiny.yaml"
BASE = [sys.executable, "-m", "ivtrain.train", RECIPE]
LOSSES = ("loss", "loss/align", "loss/pooled", "loss/diffusion", "loss/diffusion_mse", "loss/diffusion_vb")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("next_engine")
    train_synthetic.write_motion_dataset(root, per_class=4)
    assets = root / "assets"
    NextStage1.write_tiny_assets(assets)
    return {"root": root, "shards": build_shards(root), "assets": assets}


def overrides(setup, out_dir, *extra):
    sets = [f"assets={setup['assets']}", f"data.shards={setup['shards']}", f"train.out_dir={out_dir}",
            "train.steps=6", "data.num_workers=1", *extra]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("next_straight")
    run(BASE + overrides(setup, out))
    return out


def test_killed_and_resumed_the_losses_match_an_uninterrupted_run(setup, straight, tmp_path):
    """Every loss term, diffusion timesteps and noise included, is replayed after a SIGKILL to 1e-5."""
    args = BASE + overrides(setup, tmp_path / "resumed", "train.ckpt_every=3")
    run(args + ["--set", "train.debug_kill_at_step=5"], expect_rc=-9)
    assert "resumed from step00000003: step 3" in run(args).stdout
    records = losses(tmp_path / "resumed")
    assert [m["step"] for m in records] == [1, 2, 3, 4, 5, 4, 5, 6]
    reference = {m["step"]: m for m in losses(straight)}
    for m in records:
        for key in LOSSES:
            assert abs(m[key] - reference[m["step"]][key]) <= 1e-5, (m["step"], key, m[key], reference[m["step"]][key])
    last = reference[6]
    assert last["time/teacher_s"] > 0 and last["tflops_per_s"] > 0
    meta = json.loads((straight / "export.json").read_text())
    assert set(meta["artifacts"]) == {"encoder", "predictor", "decoder", "heads"}
    assert meta["encoder"]["cls_tokens"] == 4 and meta["encoder"]["patch_norm"] is True


@pytest.mark.parametrize("override, message", [
    ("next_stage1.predictor.path={assets}/tiny_siglip", "is not a ModernBERT (model_type 'siglip_vision_model'"),
    ("next_stage1.predictor.layers=7", "next_stage1.predictor.layers is 7, but the ModernBERT in"),
    ("next_stage1.predictor.path={assets}/nothing", "has no config.json"),
    ("data.image_size=48", "differs from the student's 6 x 6"),
])
def test_bad_predictor_or_teacher_stops_before_any_step_with_one_line(setup, tmp_path, override, message):
    out = tmp_path / "bad"
    proc = run(BASE + overrides(setup, out, override.format(assets=setup["assets"])), expect_rc=2)
    said = [line for line in proc.stderr.splitlines() if line.startswith("cannot start:")]
    assert len(said) == 1 and message in said[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (out / "metrics.jsonl").exists() and not list((out / "checkpoints").glob("step*"))


def iv(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from cli import app; app()", *args], cwd=ROOT,
                          env={**child_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def test_eval_recon_writes_a_png_grid_and_the_errors(setup, straight, tmp_path):
    from PIL import Image

    png = tmp_path / "grid.png"
    proc = iv("eval", "recon", str(straight), str(setup["shards"]), "--out", str(png), "--clips", "2",
              "--steps", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["clips"] == 2 and result["steps"] == 50 and result["hidden_values"] == 2 * 48 * 192
    assert result["mse_mean_fill"] > 0 and result["mse_ddpm"] > 0
    image = Image.open(png)
    # three rows per clip (frames, mask, reconstruction), 4 frames a row, 32 px frames shown at 96 px
    assert image.size == (4 * 96, 2 * 3 * 96) and image.mode == "RGB"
    bad = iv("eval", "recon", str(tmp_path), str(setup["shards"]), "--out", str(png))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("recon error:") \
        and "no recipe.json" in bad.stderr and "Traceback" not in bad.stderr
