"""The learning check's synthetic motion set: its class needs motion, and no single frame tells it.

If a single frame told the class (or its axis), a probe could score above chance from appearance alone
and the learning check would say nothing about motion. The first version had such a leak: objects
stayed inside the frame across the motion, so a shape cut by the left/right border meant horizontal
motion. These tests fail on that version (border occupancy across the motion was 0.002 vs 0.08 along).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import train_synthetic  # noqa: E402

CLIPS_PER_CLASS = 100


def clips():
    rng = np.random.default_rng(0)
    for label in train_synthetic.DIRECTIONS:
        for _ in range(CLIPS_PER_CLASS):
            yield label, train_synthetic.motion_frames(label, rng)


def best_shift(frames: np.ndarray, gap: int, shifts: list[tuple[int, int]]) -> tuple[int, int]:
    """The (dy, dx) among `shifts` that best maps frame 0 onto frame `gap` (least mean abs difference)."""
    a, b = frames[0].astype(np.float32), frames[gap].astype(np.float32)
    n = a.shape[0]

    def error(dy: int, dx: int) -> float:
        moved_from = a[max(0, -dy):n - max(0, dy), max(0, -dx):n - max(0, dx)]
        moved_to = b[max(0, dy):n - max(0, -dy), max(0, dx):n - max(0, -dx)]
        return float(np.abs(moved_from - moved_to).mean())

    return min(shifts, key=lambda s: error(*s))


def test_the_motion_between_two_frames_tells_the_class():
    gap, speed = 8, 1.5  # motion_frames' default speed: 12 px over 8 frames
    step = round(gap * speed)
    shifts = [(dy * step, dx * step) for dy, dx in train_synthetic.DIRECTIONS.values()]
    hits = [best_shift(frames, gap, shifts) == (train_synthetic.DIRECTIONS[label][0] * step,
                                                train_synthetic.DIRECTIONS[label][1] * step)
            for label, frames in clips()]
    assert np.mean(hits) > 0.95


def test_no_single_frame_tells_the_axis_of_motion():
    # How often objects touch the border rows (top/bottom) and columns (left/right), per class. Were objects
    # kept inside the frame across the motion, the border across it would be (almost) never touched.
    border = {}
    for label, frames in clips():
        drawn = frames.max(-1) >= 120  # objects are drawn in 120..255, the background in 0..39
        rows = drawn[:, [0, 1, -2, -1], :].mean()
        cols = drawn[:, :, [0, 1, -2, -1]].mean()
        border.setdefault(label, []).append((rows, cols))
    means = {label: np.mean(v, axis=0) for label, v in border.items()}
    values = np.concatenate(list(means.values()))
    assert values.min() > 0.6 * values.max(), means

