"""`iv train` on InternVideo-Next stage 2 end to end on CPU (real shards of real mp4s, a stage-1 run's export,
DeepSpeed): exact resume after a SIGKILL, a teacher that never reaches a checkpoint, a stage-1 export that does not
fit the recipe refused before any step."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import train_synthetic  # noqa: E402
from test_train_engine import build_shards, losses, run  # noqa: E402
from test_train_next_stage2 import write_stage1_run  # noqa: E402

from ivtrain.objectives.next_stage1 import NextStage1  # noqa: E402

RECIPE = "recipes/next_stage2_tiny.yaml"
BASE = [sys.executable, "-m", "ivtrain.train", RECIPE]
LOSSES = ("loss", "loss/view0", "loss/view1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("next2_engine")
    train_synthetic.write_motion_dataset(root, per_class=4)
    assets = root / "assets"
    NextStage1.write_tiny_assets(assets)
    return {"root": root, "shards": build_shards(root), "assets": assets,
            "stage1": write_stage1_run(root / "stage1", assets)}


def overrides(setup, out_dir, *extra):
    sets = [f"next_stage2.init={setup['stage1']}", f"data.shards={setup['shards']}", f"train.out_dir={out_dir}",
            "train.steps=6", "data.num_workers=1", *extra]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("next2_straight")
    run(BASE + overrides(setup, out, "train.ckpt_every=3"))
    return out


def test_killed_and_resumed_the_losses_match_an_uninterrupted_run(setup, straight, tmp_path):
    args = BASE + overrides(setup, tmp_path / "resumed", "train.ckpt_every=3")
    run(args + ["--set", "train.debug_kill_at_step=5"], expect_rc=-9)
    assert "resumed from step00000003: step 3" in run(args).stdout
    records = losses(tmp_path / "resumed")
    assert [m["step"] for m in records] == [1, 2, 3, 4, 5, 4, 5, 6]
    reference = {m["step"]: m for m in losses(straight)}
    for m in records:
        for key in LOSSES:
            assert abs(m[key] - reference[m["step"]][key]) <= 1e-5, (m["step"], key, m[key], reference[m["step"]][key])
    assert reference[6]["time/teacher_s"] > 0 and reference[6]["tflops_per_s"] > 0
    assert reference[6]["loss"] < reference[1]["loss"]
    meta = json.loads((straight / "export.json").read_text())
    assert meta["objective"] == "next_stage2" and set(meta["artifacts"]) == {"encoder", "predictor", "proj"}
    assert meta["encoder"]["num_frames"] == 8 and meta["encoder"]["cls_tokens"] == 4


def test_the_checkpoints_hold_the_student_and_no_teacher(setup, straight):
    from safetensors.torch import load_file

    tag = straight / "checkpoints" / "step00000006"
    module = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    parts = {k.split(".")[0] for k in module}                   # DeepSpeed's own file, ours to read
    assert parts == {"encoder", "predictor", "proj"}
    encoder = load_file(str(straight / "encoder.safetensors"))
    assert set(encoder) == {k[len("encoder."):] for k in module if k.startswith("encoder.")}
    # the trained encoder moved away from the stage-1 weights the teacher keeps
    stage1 = load_file(str(setup["stage1"] / "encoder.safetensors"))
    assert not torch.equal(encoder["blocks.0.attn.qkv.weight"], stage1["blocks.0.attn.qkv.weight"])
    trained = sum(v.numel() for v in module.values())
    optim = next(tag.glob("*optim_states.pt"))   # fp32 weights + two moments of the student only
    teacher = sum(v.numel() for v in stage1.values())
    assert optim.stat().st_size < 12 * trained + 200_000 < 12 * (trained + teacher)


@pytest.mark.parametrize("override, said", [
    ("next_stage2.model.embed_dim=96", "its encoder is 64 wide with patch 8, the recipe's is 96 wide with patch 8"),
    ("next_stage2.model.patch_size=16", "its encoder is 64 wide with patch 8, the recipe's is 64 wide with patch 16"),
])
def test_a_stage1_export_that_does_not_fit_stops_before_any_step_with_one_line(setup, tmp_path, override, said):
    out = tmp_path / "bad"
    proc = run(BASE + overrides(setup, out, override), expect_rc=2)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cannot start:")]
    assert len(lines) == 1 and said in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (out / "metrics.jsonl").exists() and not list((out / "checkpoints").glob("step*"))
