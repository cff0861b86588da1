"""Run a stage's per-item work in parallel while the caller stays the single manifest writer.

A task (every stage is one) is an object with `resources()` (what one worker holds), `setup()` (run once per
worker before its first item: load models there) and `work(item)` (a pure function of the item; no manifest
access). An `Executor` says where the work runs:

    Executor("local", workers=0)     inline: setup once, then every item in this process (easiest to debug)
    Executor("local", workers=N)     N spawned worker processes, kept for the life of this process
                                     (ivdata/runtime/pool.py)
    Executor("ray", workers=N, address=ADDR)
                                     N Ray actors on a cluster, each asking for the task's resources
                                     (ivdata/runtime/ray_cluster.py)

    with executor.session(stage) as session:     # connects and checks a worker fits before anything runs
        for item, result in session.map(items):  # result: the work's value, or WorkFailed(reason)
            ...

The parallel executors share their rules (ivdata/runtime/dispatch.py): the task is shipped to each worker once
and set up there once; items go out in chunks sized to about 50 ms of work, at most two chunks per worker, so
the items in flight are bounded; a chunk's results come back together; a worker that dies costs at most the
item it died on, which is recorded as failed, and the other items it held run again.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ivdata.errors import ItemFault

KINDS = ("local", "ray")


class WorkFailed(Exception):
    """An item's work raised; `reason` is what goes into the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ExecutorError(RuntimeError):
    """The work cannot start where it was asked to run (an unreachable cluster, a worker no node can hold).
    Raised before the first item, so nothing is recorded; its message is one line for the user."""


class WorkerSetupError(RuntimeError):
    """A worker's `setup()` raised (a model that does not load there): every item would fail the same way, so the
    run stops instead of recording a failure per item."""


@dataclass(frozen=True)
class Resources:
    """What one worker of a task holds while it runs. The local pool runs one item per process whatever they
    say; Ray places each worker (an actor) on a node that has them free."""
    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int = 0            # 0: no reservation

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU"] + ([f"{self.gpus:g} GPU"] if self.gpus else [])
        return ", ".join(parts + ([f"{self.memory_mb} MiB memory"] if self.memory_mb else []))


def failure_reason(e: BaseException) -> str:
    """What the manifest records for a failed item: an item fault's own sentence, else the exception."""
    return str(e) if isinstance(e, ItemFault) else f"{type(e).__name__}: {e}"


def call(fn: Callable, item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except Exception as e:  # the item fails, the run goes on
        return False, failure_reason(e)


def run_chunk(task: Any, items: list) -> tuple[list[tuple[bool, Any]], float]:
    """A worker's side of a chunk: each item's (ok, result or reason), and the seconds the chunk took."""
    t = time.perf_counter()
    out = [call(task.work, x) for x in items]
    return out, time.perf_counter() - t


def task_name(task: Any) -> str:
    return getattr(task, "name", None) or type(task).__name__


class FunctionTask:
    """A plain function as a task: no set-up, one CPU."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__name__", "function")

    def resources(self) -> Resources:
        return Resources()

    def setup(self) -> None:
        pass

    def work(self, item: Any) -> Any:
        return self.fn(item)


@dataclass
class SessionCounts:
    """What a session did besides the items: how many workers ran `setup`, how many died under it."""
    worker_setups: int = 0
    lost_workers: int = 0

    def as_dict(self) -> dict:
        return {"worker_setups": self.worker_setups, "lost_workers": self.lost_workers}


@dataclass(frozen=True)
class Executor:
    kind: str = "local"              # local | ray
    workers: int = 0                 # local: worker processes (0: inline); ray: actors (0: as many as fit)
    address: str | None = None       # ray: cluster address (None: $RAY_ADDRESS, else a local Ray instance)
    placement_timeout_s: float = 600.0   # ray: give up when no worker has been placed for this long

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ExecutorError(f"--executor {self.kind!r}: one of {', '.join(KINDS)}")
        if self.workers < 0:
            raise ExecutorError(f"--workers {self.workers}: 0 or more")
        if self.address and self.kind != "ray":
            raise ExecutorError("--ray-address needs --executor ray")

    @classmethod
    def of(cls, workers: "int | Executor") -> "Executor":
        """An executor as given, or a worker count: the local executor with that many processes."""
        return workers if isinstance(workers, Executor) else cls("local", int(workers))

    @property
    def inline(self) -> bool:
        return self.kind == "local" and self.workers == 0

    def config(self) -> dict:
        """What the runs table records about where a run ran."""
        out: dict = {"executor": self.kind, "workers": self.workers}
        if self.kind == "ray":
            from ivdata.runtime.ray_cluster import resolve_address
            out["ray_address"] = resolve_address(self.address) or "local instance"
        return out

    def connect(self) -> None:
        """Reach where the work will run, or raise ExecutorError (one line) before anything is recorded."""
        if self.kind == "ray":
            from ivdata.runtime.ray_cluster import connect
            connect(self.address, self.workers)

    @contextmanager
    def session(self, task: Any) -> Iterator["Session"]:
        """Connect and check that a worker of `task` fits (ExecutorError otherwise), then map items with it."""
        self.connect()
        if self.kind == "ray":
            from ivdata.runtime.ray_cluster import check_fits
            check_fits(task, self.address)
        yield Session(self, task)


class Session:
    def __init__(self, executor: Executor, task: Any):
        self.executor, self.task = executor, task
        self.counts = SessionCounts()

    def map(self, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """Yield (item, result) or (item, WorkFailed) in completion order."""
        ex = self.executor
        if ex.kind == "ray":
            from ivdata.runtime.ray_cluster import ray_map
            yield from ray_map(self.task, items, ex.workers, self.counts, ex.placement_timeout_s)
        elif ex.workers > 0:
            from ivdata.runtime.pool import pool
            yield from pool(ex.workers).map(self.task, items, self.counts)
        else:
            yield from inline_map(self.task, items, self.counts)


def inline_map(task: Any, items: Iterable[Any], counts: SessionCounts) -> Iterator[tuple[Any, Any]]:
    started = False
    for it in items:
        if not started:          # no items, no set-up (a stage with nothing to do loads no model)
            try:
                task.setup()
            except Exception as e:
                raise WorkerSetupError(f"{task_name(task)}: set-up failed: {failure_reason(e)}") from e
            counts.worker_setups += 1
            started = True
        ok, res = call(task.work, it)
        yield it, res if ok else WorkFailed(res)


def map_unordered(fn: Callable | Any, items: Iterable[Any], workers: "int | Executor" = 0
                  ) -> Iterator[tuple[Any, Any]]:
    """Map a plain function (or a task) over items: (item, result) or (item, WorkFailed) in completion order."""
    task = fn if hasattr(fn, "work") else FunctionTask(fn)
    with Executor.of(workers).session(task) as s:
        yield from s.map(items)
