"""The tiny stage-1 run's loss sequence is a recorded fixture: 20 steps, fixed seed, one process, ZeRO 1, on shards the
data engine builds from the synthetic motion set. A change to the trainer that should not change what stage 1
computes (a refactor of the engine, the loader, the recipe layout) must reproduce it.

`python tests/test_train_stage1_regression.py` records it again (after a deliberate change of stage 1)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "train" / "iv2_stage1_tiny_losses.json"
KEYS = ("loss", "loss/semantic", "loss/pooled", "loss/motion", "lr")
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def machine() -> dict:
    """What a float-exact comparison depends on besides the code: the CPU's model and instruction sets (oneDNN
    picks its kernels by them) and the torch build."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "model name")):
                flags += line.split(":", 1)[1].strip() + "\n"
    return {"cpu": flags, "torch": torch.__version__, "python": platform.python_version()}


def run_tiny_stage1(root: Path) -> list[dict]:
    """Build the shards and teachers (as tests/test_train_engine.py does) and train 20 steps."""
    import train_synthetic
    from test_train_engine import build_shards, child_env

    from ivtrain.tiny_teachers import save_tiny_clip_teacher, save_tiny_videomae_teacher

    train_synthetic.write_motion_dataset(root, per_class=4)
    shards = build_shards(root)
    clip, videomae = save_tiny_clip_teacher(root / "clip"), save_tiny_videomae_teacher(root / "videomae")
    out = root / "run"
    sets = [f"data.shards={shards}", f"iv2_stage1.teachers.semantic.path={clip}", f"iv2_stage1.teachers.motion.path={videomae}",
            f"train.out_dir={out}", "train.steps=20", "train.zero_stage=1", "train.seed=0", "train.ckpt_every=0",
            "train.tensorboard=false", "data.num_workers=2"]
    args = [sys.executable, "-m", "ivtrain.train", "recipes/iv2_stage1_tiny.yaml"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def test_tiny_stage1_reproduces_its_recorded_loss_sequence(tmp_path):
    recorded = json.loads(FIXTURE.read_text())
    records = run_tiny_stage1(tmp_path)
    assert [m["step"] for m in records] == list(range(1, 21))
    # float-exact where the recording was made (same CPU instruction sets and torch); elsewhere oneDNN may choose
    # other kernels, whose rounding differs in the last bits
    same_machine = recorded["machine"] == machine()
    atol = 1e-6 if same_machine else 1e-4
    for key in KEYS:
        got = [m[key] for m in records]
        assert got == pytest.approx(recorded[key], abs=atol, rel=0), (key, same_machine)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        records = run_tiny_stage1(Path(tmp))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({"machine": machine(), **{k: [m[k] for m in records] for k in KEYS}}, indent=1))
    print(f"wrote {FIXTURE}")
