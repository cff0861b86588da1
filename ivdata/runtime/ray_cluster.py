"""The Ray executor: a task's workers are Ray actors on a cluster (`--executor ray [--ray-address ADDR]`).

Where: ADDR (`host:port` of a cluster's head, or `ray://host:port` for Ray Client), else $RAY_ADDRESS, else a
Ray instance started for this process alone (never a cluster that happens to run on this machine). An address
that does not parse or answer fails at once, in one line, before anything is recorded.

What each worker asks for: the task's `resources()` (CPUs, GPUs, memory); a task no live node can hold (GPUs on a
cluster without any) fails at once, in one line. The task is put into the object store once and each actor gets
it once, runs its `setup()` once, then runs chunks of items (ivdata/runtime/dispatch.py). An actor that dies (its
process crashed, its node was lost) costs what it held as a dead local worker does: the chunk it ran is retried
item by item and only an item that kills a worker alone is recorded as failed; a new actor takes its place. If
no actor of the task can be placed for `placement_timeout_s` (every node that could hold one is gone), the run
stops with an ExecutorError: what finished is recorded, and the same command later does the rest.

The cluster's nodes must import ivkit (the same version) and see the corpus's files at the same paths (a shared
file system): workers read media and write clips and shards there, as local workers do.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import deque
from typing import Any, Iterable, Iterator

from ivdata.runtime.dispatch import DEPTH, Chunk, Dispatch
from ivdata.runtime.executor import (ExecutorError, Resources, SessionCounts, WorkerSetupError, failure_reason,
                                     run_chunk, task_name)

_ADDRESS = re.compile(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")
_connected: str | None = None          # the address this process's Ray session was opened with ("" = local)
WAIT_S = 5.0


def resolve_address(address: str | None) -> str | None:
    """The cluster to use: the one given, else $RAY_ADDRESS; None means a Ray instance of this process's own."""
    return (address or os.environ.get("RAY_ADDRESS") or "").strip() or None


def check_address(address: str) -> None:
    """A cluster address that parses and whose port answers, or one line saying why not."""
    m = _ADDRESS.match(address)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ExecutorError(f"Ray address {address!r}: expected HOST:PORT (a cluster's head, e.g. 10.0.0.5:6379) "
                            "or ray://HOST:PORT (Ray Client)")
    host = m.group(2).strip("[]")
    try:
        socket.create_connection((host, int(m.group(3))), timeout=3).close()
    except OSError as e:
        raise ExecutorError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


def connect(address: str | None, workers: int = 0) -> None:
    """Join the cluster (or start this process's own Ray instance) unless this process already has."""
    global _connected
    addr = resolve_address(address)
    if addr:
        check_address(addr)
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs Ray: pip install 'ivkit[ray]'") from None
    if ray.is_initialized():
        if _connected == (addr or ""):
            return
        ray.shutdown()
    try:
        if addr:
            ray.init(address=addr, logging_level=logging.WARNING)
        else:
            cpus = max(os.cpu_count() or 1, workers)      # room for every worker asked for
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    except Exception as e:
        raise ExecutorError(f"cannot connect to the Ray cluster at {addr or 'a new local instance'}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    _connected = addr or ""


def request(res: Resources) -> dict[str, float]:
    """A worker's needs in Ray's resource names (memory in bytes)."""
    out = {"CPU": res.cpus, "GPU": res.gpus, "memory": res.memory_mb * 2**20}
    return {k: v for k, v in out.items() if v}


def _fits(node: dict, need: dict[str, float]) -> int:
    """How many workers asking for `need` the node holds."""
    have = node["Resources"]
    return int(min((have.get(k, 0.0) + 1e-9) // v for k, v in need.items())) if need else 1 << 20


def check_fits(task: Any, address: str | None) -> int:
    """How many workers of the task the live nodes hold together; ExecutorError when not one node holds one."""
    import ray
    res = task.resources()
    need = request(res)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = sum(_fits(n, need) for n in nodes)
    if total:
        return total
    where = resolve_address(address) or "(local instance)"
    if res.gpus and not any(n["Resources"].get("GPU") for n in nodes):
        raise ExecutorError(f"{task_name(task)} asks for {res.gpus:g} GPU per worker, and the Ray cluster at {where} "
                            f"has no GPU ({len(nodes)} node(s)); run it on CPU (--device cpu) or add GPU nodes")
    have = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n["Resources"].items()) if k in need)
                     for n in nodes) or "no live node"
    raise ExecutorError(f"{task_name(task)} asks for {res.describe()} per worker, and no node of the Ray cluster at "
                        f"{where} has that much ({have})")


class _Worker:
    """The actor: holds the task, sets it up once, runs chunks."""

    def __init__(self, task: Any):
        self.task = task

    def placed(self) -> bool:
        return True

    def setup(self) -> str | None:
        try:
            self.task.setup()
            return None
        except Exception as e:
            return failure_reason(e)

    def run(self, items: list) -> tuple[list, float]:
        return run_chunk(self.task, items)


class _Slot:
    def __init__(self, actor):
        self.actor = actor
        self.placed = False
        self.ready = False
        self.setup_ref = None
        self.held: deque[tuple[Any, Chunk]] = deque()     # (ref, chunk) in the order sent


def ray_map(task: Any, items: Iterable[Any], workers: int, counts: SessionCounts,
            placement_timeout_s: float = 600.0) -> Iterator[tuple[Any, Any]]:
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    res = task.resources()
    n = workers or check_fits(task, None)
    options = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_restarts": 0, "max_task_retries": 0}
    if res.memory_mb:
        options["memory"] = res.memory_mb * 2**20
    actor_class = ray.remote(_Worker).options(**options)
    task_ref = ray.put(task)                           # shipped once; each actor fetches it once
    dispatch = Dispatch(items)
    slots: list[_Slot] = []
    owner: dict[Any, tuple[_Slot, str]] = {}           # ref -> (slot, "placed" | "setup" | "run")
    last_placed = time.monotonic()

    def start() -> _Slot:
        slot = _Slot(actor_class.remote(task_ref))
        owner[slot.actor.placed.remote()] = (slot, "placed")
        slot.setup_ref = slot.actor.setup.remote()
        owner[slot.setup_ref] = (slot, "setup")
        slots.append(slot)
        return slot

    def set_up(slot: _Slot, failure: str | None) -> None:
        if failure is not None:
            raise WorkerSetupError(f"{task_name(task)}: set-up failed in a Ray worker: {failure}")
        slot.placed = slot.ready = True
        counts.worker_setups += 1

    def drop(slot: _Slot) -> list[Chunk]:
        slots.remove(slot)
        for ref in [r for r, (s, _) in owner.items() if s is slot]:
            del owner[ref]
        ray.kill(slot.actor, no_restart=True)
        return [chunk for _, chunk in slot.held]

    def lose(slot: _Slot) -> list[Chunk]:
        counts.lost_workers += 1
        return drop(slot)

    try:
        while True:
            while True:          # hand out chunks; start actors (up to n) only while there is work for them
                slot = next((s for s in slots if len(s.held) < DEPTH), None)
                if slot is None and len(slots) < n:
                    slot = start()
                chunk = dispatch.take() if slot is not None else None
                if chunk is None:
                    break
                ref = slot.actor.run.remote(chunk.items)
                owner[ref] = (slot, "run")
                slot.held.append((ref, chunk))
            if not any(s.held for s in slots):
                break
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=WAIT_S)
            if not ready:
                waiting = [s for s in slots if not s.placed and s.held]
                if waiting and any(s.placed and not s.held for s in slots):
                    # a replacement no node has room for (its node was lost) must not hold chunks that placed
                    # workers could run: they go back out, and the run goes on with the workers it has
                    for slot in waiting:
                        for chunk in reversed(drop(slot)):
                            dispatch.put_back(chunk)
                    n = len(slots)
                    continue
                if any(s.placed for s in slots):
                    last_placed = time.monotonic()
                elif time.monotonic() - last_placed > placement_timeout_s:
                    raise ExecutorError(
                        f"no worker of {task_name(task)} ({res.describe()}) could be placed on the Ray cluster for "
                        f"{placement_timeout_s:g} s: the run stops here with what finished recorded; run the same "
                        "command again when the cluster has room")
                continue
            ref = ready[0]
            slot, kind = owner.pop(ref)
            try:
                value = ray.get(ref)
            except RayActorError as e:
                if kind != "run" and getattr(e, "actor_init_failed", False):
                    raise WorkerSetupError(f"{task_name(task)}: a Ray worker could not start: "
                                           f"{str(e).splitlines()[0]}") from None
                yield from dispatch.lost(lose(slot))
                continue
            except RayTaskError as e:          # run() itself raised (a result Ray could not store, say)
                if kind != "run":
                    raise WorkerSetupError(f"{task_name(task)}: a Ray worker failed: {e.cause!r}") from None
                held = next(c for r, c in slot.held if r == ref)
                value = ([(False, f"{type(e.cause).__name__}: {e.cause}")] * len(held.items), 0.0)
            except RayError:                   # the result is gone with its node, the worker crashed, ...
                yield from dispatch.lost(lose(slot))
                continue
            if kind == "placed":
                slot.placed = True
                last_placed = time.monotonic()
            elif kind == "setup":
                set_up(slot, value)
            else:
                if not slot.ready:
                    # an actor runs its calls in order, so its set-up has finished; ray.wait may still hand this
                    # result over first, and a failed set-up must stop the run before any of its items is recorded
                    owner.pop(slot.setup_ref, None)
                    set_up(slot, ray.get(slot.setup_ref))
                index = next(i for i, (r, _) in enumerate(slot.held) if r == ref)
                chunk = slot.held[index][1]
                del slot.held[index]
                yield from dispatch.done(chunk, *value)
    finally:
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)
        del task_ref
