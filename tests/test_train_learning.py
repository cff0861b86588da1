"""Must-show 5 and the demo path: stage-1 training on corpus-core shards of synthetic motion videos
teaches the encoder something an attentive probe can use; and the attentive probe command itself."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_stage1_training_beats_random_init_on_a_motion_probe(tmp_path):
    import train_learning_check

    result = train_learning_check.learning_check(tmp_path, **train_learning_check.QUICK)
    print(json.dumps(result, indent=2))
    assert result["student"]["last_loss"] < 0.5 * result["student"]["first_loss"]
    assert result["mean_trained"] > result["mean_random"] + 0.1, result
