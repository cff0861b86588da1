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


def test_an_item_whose_submit_meets_a_broken_pool_is_not_lost(monkeypatch):
    # A worker can die between two completions; the next submit then raises BrokenProcessPool. The item
    # being submitted must stay queued for the rebuilt pool (it was once dropped: 9 of 10 results came back).
    from concurrent.futures.process import BrokenProcessPool

    import ivdata.runtime.executor as executor

    real_pool, submits = executor._pool, []

    class BreaksOnThirdSubmit:
        def __init__(self, pool):
            self.pool = pool

        def submit(self, *args):
            submits.append(args[-1])
            if len(submits) == 3:
                raise BrokenProcessPool("a worker died")
            return self.pool.submit(*args)

    monkeypatch.setattr(executor, "_pool", lambda workers: BreaksOnThirdSubmit(real_pool(workers)))
    got = dict(map_unordered(square_or_fail, [0, 1, 2, 4, 6], workers=2))
    assert got == {0: 0, 1: 1, 2: 4, 4: 16, 6: 36}
