"""Must-show 5: stage-1 training on corpus-core shards of synthetic motion videos teaches the encoder
the direction of motion, which the attentive probe reads better than from the same encoder at random
initialization. The full bench set-up (about 15 minutes on 2 CPU cores): bench/train_learning_check.py."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
@pytest.mark.timeout(1700)  # ~16 min on 2 cores: over the suite's 900 s default, under .ci/run's 1800 s for test-slow
def test_stage1_training_beats_random_init_on_a_motion_probe(tmp_path):
    import train_learning_check

    result = train_learning_check.learning_check(tmp_path)
    print(json.dumps(result, indent=2))
    # the teacher must know the task, else the check says nothing about distillation
    assert result["teacher"]["finetune"]["eval_accuracy"] > 0.9, result["teacher"]
    assert result["student"]["last"]["loss/motion"] < result["student"]["first"]["loss/motion"]
    # The run is deterministic (clip bytes included); this set-up gives 0.432 vs 0.385, +0.047 (bench/RESULTS.md).
    # The margin is small and moves with the data: one re-encoded clip differing by a few pixel levels gave
    # +0.013 to +0.15 before the cut was made deterministic. Asked: the trained encoder reads better, on the
    # average of the probe seeds by more than 2.5 eval clips (one clip is 0.008; chance is 0.25).
    assert result["margin"] > 0.02, result
