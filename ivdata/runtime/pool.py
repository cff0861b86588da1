"""The local executor's worker processes: spawned once per process and worker count, kept across stages.

Each worker has a pipe of its own, so the parent knows what every worker holds. A task is pickled once per
session and sent to each worker once, before its first chunk; the worker unpickles it and runs its `setup()`
there (models load once per worker), then runs chunks of items until the session releases it (the worker drops
the task and what its set-up loaded). Spawned, not forked: the parent holds a DuckDB connection and threads.
"""
from __future__ import annotations

import atexit
import gc
import itertools
import multiprocessing as mp
import pickle
import signal
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Iterable, Iterator

from ivdata.runtime.dispatch import DEPTH, Chunk, Dispatch
from ivdata.runtime.executor import SessionCounts, WorkerSetupError, failure_reason, run_chunk, task_name

_TASK_IDS = itertools.count(1)


def serve(conn) -> None:
    """A worker's loop: install a task (and set it up), run chunks, release, stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent decides what an interrupt stops
    task = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):                  # the parent is gone
            return
        op = msg[0]
        if op == "task":
            task = None
            gc.collect()                             # the previous task's models go before the next one's load
            try:
                task = pickle.loads(msg[1])
                task.setup()
                conn.send(("ready",))
            except Exception as e:
                task = None
                conn.send(("setup_failed", failure_reason(e)))
        elif op == "chunk":
            if task is None:                         # its set-up failed: the parent is stopping the session
                continue
            outcomes, seconds = run_chunk(task, msg[1])
            try:
                conn.send(("done", outcomes, seconds))
            except (pickle.PicklingError, TypeError, AttributeError) as e:   # a result that cannot travel
                conn.send(("done", [(False, f"result could not be sent back: {failure_reason(e)}")] * len(msg[1]),
                           seconds))
        elif op == "release":
            task = None
            gc.collect()
        elif op == "stop":
            return


class Worker:
    def __init__(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child,), name="ivkit-worker")
        self.proc.start()
        child.close()
        self.task_id: int | None = None
        self.held: deque[Chunk] = deque()

    def send(self, msg) -> bool:
        """False when the worker is gone (its death is noticed, and its chunks handed back, by the caller)."""
        try:
            self.conn.send(msg)
            return True
        except OSError:                     # BrokenPipeError, ConnectionResetError
            return False

    def stop(self) -> None:
        self.send(("stop",))
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=2)
        self.conn.close()


class Pool:
    def __init__(self, size: int):
        self.size = size
        self.workers: list[Worker | None] = [None] * size

    def map(self, task: Any, items: Iterable[Any], counts: SessionCounts) -> Iterator[tuple[Any, Any]]:
        payload = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)     # once per session, not per item
        task_id = next(_TASK_IDS)
        dispatch = Dispatch(items)
        finished = False
        try:
            while True:
                self._fill(task_id, payload, dispatch)
                busy = [w for w in self.workers if w is not None and w.held]
                if not busy:
                    break
                wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
                for w in busy:
                    yield from self._collect(w, task, dispatch, counts)
            finished = True
        finally:
            if finished:
                for w in self.workers:
                    if w is not None and w.task_id == task_id:
                        w.task_id = None
                        if not w.send(("release",)):
                            self._drop(w)
            else:       # stopped early (an error, an interrupt): workers may still be busy with this task
                self.close()

    def _fill(self, task_id: int, payload: bytes, dispatch: Dispatch) -> None:
        for i in range(self.size):
            while True:
                w = self.workers[i]
                if w is None:
                    w = self.workers[i] = Worker()
                if len(w.held) >= DEPTH:
                    break
                chunk = dispatch.take()
                if chunk is None:
                    return
                sent = (w.task_id == task_id or w.send(("task", payload))) and w.send(("chunk", chunk.items))
                if not sent:
                    # a worker that died idle holds nothing: replace it now; one that holds chunks is found dead
                    # (and its chunks handed back) by _collect
                    dispatch.put_back(chunk)
                    if w.held:
                        break
                    self._drop(w)
                    continue
                w.task_id = task_id
                w.held.append(chunk)

    def _collect(self, w: Worker, task: Any, dispatch: Dispatch, counts: SessionCounts):
        dead = False
        while True:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                dead = True
                break
            if msg[0] == "done":
                yield from dispatch.done(w.held.popleft(), msg[1], msg[2])
            elif msg[0] == "ready":
                counts.worker_setups += 1
            elif msg[0] == "setup_failed":
                raise WorkerSetupError(f"{task_name(task)}: set-up failed in a worker process: {msg[1]}")
        if dead or not w.proc.is_alive():
            held = list(w.held)
            self._drop(w)
            counts.lost_workers += 1
            yield from dispatch.lost(held)

    def _drop(self, w: Worker) -> None:
        self.workers[self.workers.index(w)] = None
        w.held.clear()
        w.stop()

    def close(self) -> None:
        for w in self.workers:
            if w is not None:
                w.stop()
        self.workers = [None] * self.size


_POOLS: dict[int, Pool] = {}


def pool(size: int) -> Pool:
    """One pool per worker count, kept for the life of the process: starting spawn workers costs about a second
    each, which every stage of a pipeline would otherwise pay again."""
    if size not in _POOLS:
        _POOLS[size] = Pool(size)
    return _POOLS[size]


@atexit.register
def _close_pools() -> None:
    for p in _POOLS.values():
        p.close()
