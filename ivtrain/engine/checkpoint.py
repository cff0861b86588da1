"""Checkpoints with exact resume: DeepSpeed's (model, optimizer, LR schedule) plus, per rank, the RNG states and the
loader's position, on the same or another number of processes.

A checkpoint tag dir holds DeepSpeed's files and `rankNNN_state.pt` (position, RNG, data plan) of every rank. Frozen
parameters are left out of it (they are rebuilt from where the objective loads them). A checkpoint written by
another number of processes is resumed too: its ZeRO-partitioned optimizer state goes through DeepSpeed's universal
checkpoint (converted once, beside the checkpoint), and the sample positions name the same samples under any world
size. Per-rank RNG streams (stochastic depth) cannot be split or merged: they restart from (seed, step, rank).
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ivtrain.engine.deepspeed_setup import ResumeError, mend_zero3_universal_load
from ivtrain.engine.distributed import DistContext

CONVERSION_WAIT_S = 4 * 3600.0   # rank 0 converts about 7 s per GB of checkpoint on a 2-core host


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
             "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": np_state[2], "has_gauss": np_state[3], "gauss": np_state[4]}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def convert_to_universal(tag_dir: Path, out_dir: Path) -> None:
    """DeepSpeed's ds_to_universal on one checkpoint tag: every parameter's fp32 weights and optimizer moments,
    whole, so that any world size can partition them afresh. Written to a temporary folder and renamed, so a
    crash mid-conversion leaves nothing that looks complete."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(tag_dir), "--output_folder", str(tmp), "--inject_missing_state"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ResumeError(f"converting {tag_dir} to a universal checkpoint failed:\n{proc.stdout[-2000:]}"
                          f"{proc.stderr[-2000:]}")
    tmp.rename(out_dir)


def wait_for_conversion(target: Path, failed: Path, timeout_s: float = CONVERSION_WAIT_S, poll_s: float = 1.0) -> None:
    """The other ranks' wait while rank 0 converts: on the shared checkpoint folder, not in a collective, since
    a collective gives up after DeepSpeed's 10-minute default (DEEPSPEED_TIMEOUT) and a 6B conversion takes
    longer than that on a small host (bench/RESULTS.md). Returns once `target` has been renamed into place;
    raises with rank 0's message if it wrote `failed`, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not target.exists():
        if failed.exists():
            raise ResumeError(f"rank 0 could not convert the checkpoint: {failed.read_text()}")
        if time.monotonic() > deadline:
            raise ResumeError(f"{target} did not appear within {timeout_s:.0f} s of waiting for rank 0's conversion")
        time.sleep(poll_s)


# ---------------------------------------------------------------- checkpoints written before the mixture loader
def position_from_batch_number(batch_number: int, plan: dict) -> int:
    """Checkpoints from before sample positions stored the number of the next batch under their own world size
    and batch size (kept in their plan); the sample position it stood for."""
    per_epoch = (plan["samples"] // plan["world"]) // plan["batch_size"]
    epoch, b = divmod(batch_number, per_epoch)
    return epoch * plan["samples"] + b * plan["batch_size"] * plan["world"]


def mixture_state(state: dict) -> tuple[dict, dict | None]:
    """(mixture position, data plan) of a rank state, converting the one-source layout of older checkpoints (an
    integer position, a flat plan) to the mixture's (one source named `default`)."""
    position, plan = state["data_position"], state.get("data_plan")
    if isinstance(position, dict):
        return position, plan
    if state.get("position_unit") != "sample" and plan:
        position = position_from_batch_number(position, plan)
    if plan and "sources" not in plan:
        plan = {"seed": plan["seed"], "shuffle": plan["shuffle"],
                "sources": [{"name": "default", "weight": 1.0, **{k: plan[k] for k in
                                                                  ("samples", "shards", "shard_names_sha256")}}]}
    return {"batches": 0, "sources": {"default": int(position)}}, plan


def describe(position: dict) -> str:
    """A loader position as a person reads it: the sample position of a single source, else each source's."""
    sources = position["sources"]
    if len(sources) == 1:
        return str(next(iter(sources.values())))
    return f"batch {position['batches']} (" + ", ".join(f"{k} {v}" for k, v in sources.items()) + ")"


def plan_differences(saved: dict, current: dict) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


@dataclass
class Resumed:
    step: int
    counters: dict
    position: dict
    plan: dict | None
    global_batch: int | None
    written_by: int
    universal: bool


@dataclass
class Checkpoints:
    out_dir: Path
    dist: DistContext
    keep_last: int = 2
    frozen: list[str] = field(default_factory=list)   # parameter names left out of every checkpoint

    @property
    def dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @staticmethod
    def tag(step: int) -> str:
        return f"step{step:08d}"

    def latest(self) -> tuple[Path, int] | None:
        """(tag dir named by `latest`, how many processes wrote it), or None for a fresh run."""
        if not (self.dir / "latest").exists():
            return None
        tag_dir = self.dir / (self.dir / "latest").read_text().strip()
        written_by = len(list(tag_dir.glob("rank*_state.pt")))
        if written_by == 0:
            raise ResumeError(f"{tag_dir} holds no rank*_state.pt: the checkpoint is incomplete")
        return tag_dir, written_by

    @staticmethod
    def partitioned(tag_dir: Path) -> bool:
        # ZeRO 1-3 (and the bf16 optimizer) write optimizer state per rank; ZeRO 0 in fp32 writes it whole
        return any(tag_dir.glob("*optim_states.pt"))

    def needs_universal(self, latest: tuple[Path, int] | None) -> bool:
        return latest is not None and latest[1] != self.dist.world and self.partitioned(latest[0])

    def save(self, engine, step: int, counters: dict, position: dict, plan: dict, global_batch: int) -> None:
        tag, rank = self.tag(step), self.dist.rank
        # per-rank state (position and RNG differ by rank), written beside DeepSpeed's files and before them:
        # DeepSpeed's last act is to point `latest` at the tag, so a kill at any moment leaves `latest` naming a
        # complete checkpoint
        (self.dir / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"data_position": position, "position_unit": "mixture", "rng": rng_state(), "step": step,
                    "data_plan": plan, "global_batch": global_batch}, self.dir / tag / f"rank{rank:03d}_state.pt")
        self.dist.barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={"step": step, "counters": counters},
                               exclude_frozen_parameters=bool(self.frozen))
        self.dist.barrier()
        if rank == 0:
            tags = sorted(p for p in self.dir.glob("step*") if p.is_dir())
            for old in tags[:-max(1, self.keep_last)]:
                shutil.rmtree(old)
            # a conversion for another world size has served once this world has a checkpoint of its own
            shutil.rmtree(self.dir / "universal", ignore_errors=True)
        self.dist.barrier()

    def _convert(self, tag_dir: Path, written_by: int) -> Path:
        """Rank 0 converts `tag_dir` to a universal checkpoint (once) while the others wait; returns its parent."""
        tag, load_dir = tag_dir.name, self.dir / "universal"
        failed = load_dir / f"{tag}.failed"
        if self.dist.rank == 0:
            failed.unlink(missing_ok=True)   # a marker from an earlier attempt
        self.dist.barrier()
        if self.dist.rank == 0 and not (load_dir / tag).exists():
            print(f"{tag} was written by {written_by} process(es), this run has {self.dist.world}: converting it "
                  "to a universal checkpoint", flush=True)
            load_dir.mkdir(exist_ok=True)
            try:
                convert_to_universal(tag_dir, load_dir / tag)
            except Exception as e:   # tell the waiting ranks why, rather than let them wait
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
        elif self.dist.rank != 0:
            wait_for_conversion(load_dir / tag, failed)
        self.dist.barrier()
        return load_dir

    def resume(self, engine, latest: tuple[Path, int], universal: bool, zero_stage: int, seed: int) -> Resumed:
        tag_dir, written_by = latest
        same_world = written_by == self.dist.world
        rank_file = tag_dir / f"rank{self.dist.rank if same_world else 0:03d}_state.pt"
        if not rank_file.exists():
            raise ResumeError(f"{rank_file} missing: the checkpoint {tag_dir} is incomplete")
        load_dir = self._convert(tag_dir, written_by) if universal else self.dir
        # frozen parameters are not in the checkpoint: the module already holds them (rebuilt from their source)
        path, client = engine.load_checkpoint(str(load_dir), tag=tag_dir.name, load_module_strict=not self.frozen)
        if path is None:
            raise ResumeError(f"could not load the checkpoint {tag_dir}")
        if universal and zero_stage == 3:
            mend_zero3_universal_load(engine.optimizer.optimizer, load_dir / tag_dir.name)
        state = torch.load(rank_file, weights_only=True)
        position, plan = mixture_state(state)
        if plan:   # world size and batch size are no longer part of what a position means
            plan = {k: v for k, v in plan.items() if k not in ("world", "batch_size")}
        step = int(client["step"])
        if same_world:
            set_rng_state(state["rng"])
        else:  # one stream per rank cannot be split or merged: new ranks draw afresh, seeded by the step
            torch.manual_seed(seed * 1000 + self.dist.rank + 1 + 1_000_003 * step)
        return Resumed(step=step, counters=dict(client.get("counters", {})), position=position, plan=plan,
                       global_batch=state.get("global_batch"), written_by=written_by, universal=universal)
