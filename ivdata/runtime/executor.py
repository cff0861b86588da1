"""Run a stage's per-item work in parallel while the caller stays the single manifest writer.

`map_unordered(fn, items)` yields (item, result-or-exception) as work completes. Workers never touch
the manifest: they return plain data, and the caller records it. Three executors share that contract:
inline (workers=0, easiest to debug), a local process pool (default), and Ray (clusters).
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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
        return False, f"{type(e).__name__}: {e}" if not _is_media(e) else str(e)


def _is_media(e: Exception) -> bool:
    from ivdata.media.probe import MediaError
    return isinstance(e, MediaError)


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
    # spawn: the parent holds a DuckDB connection and threads; forking that is not safe.
    ctx = mp.get_context("spawn")
    limit = max_in_flight or workers * 4
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: dict = {}
        it = iter(items)
        for x in it:
            pending[pool.submit(_call, fn, x)] = x
            if len(pending) >= limit:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                x = pending.pop(fut)
                ok, res = fut.result()
                yield x, res if ok else WorkFailed(res)
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(_call, fn, nxt)] = nxt


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
