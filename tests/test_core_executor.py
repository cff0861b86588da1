"""The local executor: results from worker processes, failures as values, a crashing worker isolated."""
from __future__ import annotations

import os

from ivdata.runtime.executor import WorkFailed, map_unordered


def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    if x == 5:
        os._exit(139)          # what a segfaulting decoder looks like from the parent
    return x * x


def test_pool_results_failures_and_a_crashing_item():
    got = dict(map_unordered(square_or_fail, range(10), workers=2))
    assert sorted(got) == list(range(10))
    assert isinstance(got[3], WorkFailed) and "three is bad" in got[3].reason
    assert isinstance(got[5], WorkFailed) and "crashed" in got[5].reason
    assert all(got[i] == i * i for i in range(10) if i not in (3, 5))
    # The pool is rebuilt after the crash and reused afterwards.
    assert dict(map_unordered(square_or_fail, [6, 7], workers=2)) == {6: 36, 7: 49}


def test_items_sent_to_a_worker_that_died_idle_are_not_lost():
    # A worker can die between two sessions (the OOM killer, say); the next chunk sent to it fails to send. That
    # chunk must go out again to its replacement (a dropped chunk once lost items: 9 of 10 results came back).
    from ivdata.runtime.pool import pool

    assert dict(map_unordered(square_or_fail, [0, 1], workers=2)) == {0: 0, 1: 1}
    for w in pool(2).workers:
        if w is not None:
            w.proc.kill()
            w.proc.join()
    got = dict(map_unordered(square_or_fail, [0, 1, 2, 4, 6, 7, 8, 9], workers=2))
    assert got == {0: 0, 1: 1, 2: 4, 4: 16, 6: 36, 7: 49, 8: 64, 9: 81}
