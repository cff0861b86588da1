"""Run a stage's per-item work in parallel while the caller stays the single manifest writer.

`map_unordered(fn, items)` yields (item, result-or-exception) as work completes. Workers never touch
the manifest: they return plain data, and the caller records it. Three executors share that contract:
inline (workers=0, easiest to debug), a local process pool (default), and Ray (clusters).
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator


class WorkFailed(Exception):
    """An item's work raised; `reason` is what goes into the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _call(fn: Callable, item: Any):
    try:
        return True, fn(item)
    except Exception as e:  # the item fails, the run goes on
        return False, failure_reason(e)


def failure_reason(e: Exception) -> str:
    """What the manifest records for a failed item: a media fault's own sentence, else the exception."""
    return str(e) if _is_media(e) else f"{type(e).__name__}: {e}"


def _is_media(e: Exception) -> bool:
    from ivdata.media.probe import MediaError
    return isinstance(e, MediaError)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """One pool per worker count, kept for the life of the process: starting spawn workers costs about a
    second each, which would otherwise be paid again by every stage of a pipeline."""
    pool = _POOLS.get(workers)
    if pool is None:
        # spawn: the parent holds a DuckDB connection and threads; forking that is not safe.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        _POOLS[workers] = pool
    return pool


def _drop_pool(workers: int) -> None:
    pool = _POOLS.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def _shutdown_pools() -> None:
    for w in list(_POOLS):
        _drop_pool(w)


def map_unordered(fn: Callable, items: Iterable[Any], workers: int = 0, backend: str = "local",
                  max_in_flight: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield (item, result) or (item, WorkFailed) in completion order."""
    items = list(items)
    if backend == "ray":
        yield from _ray_map(fn, items, workers)
        return
    if workers <= 0 or len(items) <= 1:
        for it in items:
            ok, res = _call(fn, it)
            yield it, res if ok else WorkFailed(res)
        return
    limit = max_in_flight or workers * 4
    queue = list(reversed(items))

    def submit_next(pool: ProcessPoolExecutor, pending: dict) -> None:
        # taken off the queue only once submitted: a broken pool raises in submit, and the item must
        # stay queued for the rebuilt pool, not vanish
        fut = pool.submit(_call, fn, queue[-1])
        pending[fut] = queue.pop()

    while queue:
        pool, pending = _pool(workers), {}
        try:
            while queue and len(pending) < limit:
                submit_next(pool, pending)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    ok, res = fut.result()
                    x = pending.pop(fut)
                    yield x, res if ok else WorkFailed(res)
                    if queue:
                        submit_next(pool, pending)
        except BrokenProcessPool:
            # A worker died (a decoder segfault on a corrupt file, the OOM killer): we cannot tell which
            # in-flight item did it, so each one reruns alone and only the culprit is recorded as failed.
            _drop_pool(workers)
            for x in pending.values():
                yield x, _run_isolated(fn, x)


def _run_isolated(fn: Callable, item: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as one:
        try:
            ok, res = one.submit(_call, fn, item).result()
        except BrokenProcessPool:
            return WorkFailed("worker process crashed on this item (e.g. a decoder segfault)")
    return res if ok else WorkFailed(res)


def _ray_map(fn: Callable, items: list, workers: int) -> Iterator[tuple[Any, Any]]:
    import ray  # optional extra: pip install 'ivkit[ray]'

    if not ray.is_initialized():
        ray.init(num_cpus=workers or None, ignore_reinit_error=True, include_dashboard=False)
    remote = ray.remote(_call)
    refs = {remote.remote(fn, x): x for x in items}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            x = refs.pop(ref)
            ok, res = ray.get(ref)
            yield x, res if ok else WorkFailed(res)
