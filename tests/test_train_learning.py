"""Stage-1 training on corpus-core shards of synthetic motion videos teaches the encoder
motion (so far the axis of the direction, not its sign), which the attentive probe reads better than from
the same encoder at random initialization. The full bench set-up (about 10 minutes on 2 CPU cores): bench/train_learning_check.py."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
@pytest.mark.timeout(1700)  # 9-16 min on 2 cores: over the suite's 900 s default, under .ci/run's 1800 s for test-slow
def test_stage1_training_beats_random_init_on_a_motion_probe(tmp_path):
    import train_learning_check

    result = train_learning_check.learning_check(tmp_path)
    print(json.dumps(result, indent=2))
    # the teacher must know the task, else the check says nothing about distillation
    assert result["teacher"]["finetune"]["eval_accuracy"] > 0.9, result["teacher"]
    assert result["student"]["last"]["loss/motion"] < result["student"]["first"]["loss/motion"]
    # Five runs of this set-up (three draws of the clips, two with a few clip bytes changed by the
    # encoder, one with this 2000-step teacher) gave margins of +0.10 to +0.15 (bench/RESULTS.md). Asked: half the smallest, +0.05 (6.4 eval
    # clips; chance is 0.25).
    assert result["margin"] > 0.05, result
    # What the trained encoder reads is the axis of motion (0.93-0.96 against 0.61-0.66 at random init),
    # which no single frame shows (tests/test_train_synthetic.py).
    assert result["axis_accuracy_trained"] > 0.8, result
