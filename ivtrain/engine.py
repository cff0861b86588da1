"""The training engine: DeepSpeed set-up, the loop, checkpoints with exact resume, metrics.

It knows nothing about stages: an objective hands it a trainable module and a `prepare` step
(see ivtrain.objectives). Resume restores model, optimizer, LR schedule (DeepSpeed checkpoint),
per rank the RNG states, and the data position (a sample position, ivtrain.data.shards).

A checkpoint written by another number of processes is resumed too: its ZeRO-partitioned optimizer
state goes through DeepSpeed's universal checkpoint (converted once, beside the checkpoint), and the
sample position names the same clips under any world size. The clips' masks come from per-clip
seeds, so when the global batch (batch_size x grad_accum x world) is kept, the resumed run computes
the same losses as one that never changed world size; the per-rank RNG streams (stochastic depth)
start afresh from (seed, step, rank), as they cannot be split or merged.
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ivtrain.config import Recipe, to_dict
from ivtrain.data.shards import ShardIndex, index_cache_dir, make_loader, resolve_shards
from ivtrain.devices import datasheet_peak_tflops, pick_device
from ivtrain.optim import lr_factor, param_groups, resolve_schedule


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(device: torch.device) -> tuple[int, int, int]:
    """Initialize torch.distributed (gloo on CPU, nccl on CUDA); single process works without a launcher."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `python`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def deepspeed_config(recipe: Recipe, world: int, load_universal: bool = False) -> dict:
    tc = recipe.train
    return {
        "checkpoint": {"load_universal": load_universal},
        "train_micro_batch_size_per_gpu": recipe.data.batch_size,
        "gradient_accumulation_steps": tc.grad_accum,
        "train_batch_size": recipe.data.batch_size * tc.grad_accum * world,
        "gradient_clipping": recipe.optim.clip_grad,
        "zero_optimization": {"stage": tc.zero_stage},
        # bf16 weights, activations and gradients; DeepSpeed keeps fp32 master weights for the optimizer
        "bf16": {"enabled": tc.bf16},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }


def peak_flops(recipe: Recipe, device: torch.device) -> float | None:
    if recipe.train.peak_tflops > 0:
        return recipe.train.peak_tflops * 1e12
    if device.type == "cuda":
        tflops = datasheet_peak_tflops(torch.cuda.get_device_name(device))
        return tflops * 1e12 if tflops else None
    return None


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


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB (process peak RSS)


class MetricsSink:
    """Rank-0 metrics: rich console lines, JSONL, TensorBoard.

    A resumed run replays the steps after its checkpoint. metrics.jsonl keeps every life's rows (a replayed step
    appears once per life, the resumed run's last), which is the record of what happened; TensorBoard is told to
    hide the first life's rows from `resumed_step + 1` on, so its curves show one value per step."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resumed_step: int = 0):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None:
                    self.writer.add_scalar(k, v, step)
        parts = [f"[bold]step {step}[/bold]", f"loss {metrics['loss']:.4f}"]
        parts += [f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/")]
        parts += [f"lr {metrics['lr']:.2e}", f"{metrics['samples_per_s']:.1f} clips/s",
                  f"step {metrics['step_time_s'] * 1000:.0f} ms"]
        if metrics.get("mfu") is not None:
            parts.append(f"MFU {metrics['mfu'] * 100:.1f}%")
        self.console.print("  ".join(parts))

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


class ResumeError(RuntimeError):
    """The checkpoint in out_dir cannot be continued exactly by this run (other data order, broken checkpoint)."""


CONVERSION_WAIT_S = 4 * 3600.0   # rank 0 converts about 7 s per GB of checkpoint on a 2-core host


def convert_to_universal(tag_dir: Path, out_dir: Path) -> None:
    """DeepSpeed's ds_to_universal on one checkpoint tag: every parameter's fp32 weights and optimizer moments,
    whole, so that any world size can partition them afresh. Written to a temporary folder and renamed, so a
    crash mid-conversion leaves nothing that looks complete."""
    import subprocess
    import sys

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


def mend_zero3_universal_load(optimizer: torch.optim.Optimizer, universal_tag_dir: Path) -> None:
    """Undo two faults of DeepSpeed's (0.19) ZeRO-3 universal load with several parameter groups (we have two or
    more: weight decay on or off, and layer-wise lr scales). It gives every group the first group's
    hyperparameters, and it hands every group's state one shared `step` tensor, which AdamW then increments
    once per group per step, so the later groups' bias correction runs ahead. Measured on a two-group model:
    the biases drift by 1e-4 in the first step after the load; with the mend, the losses are those of the
    uninterrupted run."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    with torch.serialization.safe_globals([ZeroStageEnum, LossScaler]):  # the two classes DeepSpeed pickles there
        saved = torch.load(universal_tag_dir / "zero" / "optimizer_state.pt", weights_only=True)
    groups = saved["optimizer_state_dict"]["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ResumeError(f"{universal_tag_dir} holds {len(groups)} optimizer parameter groups, this run "
                          f"{len(optimizer.param_groups)}")
    for group, want in zip(optimizer.param_groups, groups):
        group.update({k: v for k, v in want.items() if k != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def undo_initialization_step(optimizer) -> None:
    """DeepSpeed's (0.19) wrapper for bf16 without ZeRO, FP16_UnfusedOptimizer, runs one AdamW step on zero
    gradients when it is built, to allocate the optimizer state. That step is not inert: AdamW decays the fp32
    master weights once (by lr x weight_decay) and counts it, so every later update uses the bias correction of
    one step further on; the first real update comes out 0.74x the size it should be. Measured on the tiny
    stage-1 recipe: the losses ran up to 4.4 % off fp32 within 6 steps, against 0.6 % for ZeRO 1, whose optimizer
    no longer takes that step. Undone here: the inner optimizer's state is cleared (AdamW builds it afresh on the
    first real step) and the masters are copied back from the bf16 weights they were cloned from, exactly."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return
    optimizer.optimizer.state.clear()
    with torch.no_grad():
        for masters, weights in zip(optimizer.fp32_groups, optimizer.fp16_groups):
            for master, weight in zip(masters, weights):
                master.copy_(weight)


def position_from_batch_number(batch_number: int, plan: dict) -> int:
    """Checkpoints from before sample positions stored the number of the next batch under their own world size
    and batch size (kept in their plan); the sample position it stood for."""
    per_epoch = (plan["samples"] // plan["world"]) // plan["batch_size"]
    epoch, b = divmod(batch_number, per_epoch)
    return epoch * plan["samples"] + b * plan["batch_size"] * plan["world"]


def plan_differences(saved: dict, current: dict) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


class Trainer:
    def __init__(self, recipe: Recipe):
        import deepspeed

        from ivtrain.objectives import build_objective

        self.recipe = recipe
        tc = recipe.train
        self.device = pick_device(tc.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.rank, self.world, _ = setup_distributed(self.device)
        self.out_dir = Path(tc.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2))
        dist.barrier()

        # the same seed on every rank for the weights; rank-specific streams for masks afterwards
        torch.manual_seed(tc.seed)
        self.objective = build_objective(recipe, self.device)
        self.index = self._shard_index()
        self.schedule = resolve_schedule(recipe.optim, tc.steps, tc.epochs, self.global_batch(), len(self.index))
        model = self.objective.trainable
        optimizer = torch.optim.AdamW(param_groups(model, recipe.optim, self.schedule.peak_lr),
                                      lr=self.schedule.peak_lr, betas=tuple(recipe.optim.betas), eps=recipe.optim.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, self.schedule))
        latest = self._latest_checkpoint() if tc.resume else None
        universal = latest is not None and latest[1] != self.world and self._partitioned(latest[0])
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=deepspeed_config(recipe, self.world, universal))
        undo_initialization_step(self.engine.optimizer)
        torch.manual_seed(tc.seed * 1000 + self.rank + 1)
        self.step = 0
        self.data_position = 0
        self.counters = {"skipped_samples": 0, "nonfinite_steps": 0, "skipped_updates": 0}
        self._skipped_this_step = 0   # this rank's, summed over ranks into the counter at the end of a step
        self.data_plan: dict = {}
        self.samples_per_epoch = 0
        self.checkpoint_plan: dict | None = None   # the data plan of the checkpoint resumed from
        if latest is not None:
            self._resume(*latest, universal)
        flops = self.objective.flops_per_sample()
        self.flops_per_sample = flops
        self.peak = peak_flops(recipe, self.device)
        self.sink = MetricsSink(self.out_dir, self.rank == 0, tc.tensorboard, self.step)
        self._stop = False

    # ------------------------------------------------------------ checkpoints
    def _tag(self, step: int) -> str:
        return f"step{step:08d}"

    def save(self) -> None:
        tag = self._tag(self.step)
        state = {"step": self.step, "counters": self.counters}
        # per-rank state (data position and RNG differ by rank), written beside DeepSpeed's files and
        # before them: DeepSpeed's last act is to point `latest` at the tag, so a kill at any moment
        # leaves `latest` naming a complete checkpoint
        (self.ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"data_position": self.data_position, "position_unit": "sample", "rng": rng_state(),
                    "step": self.step, "data_plan": self.data_plan, "global_batch": self.global_batch()},
                   self.ckpt_dir / tag / f"rank{self.rank:03d}_state.pt")
        dist.barrier()
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=state)
        dist.barrier()
        if self.rank == 0:
            tags = sorted(p for p in self.ckpt_dir.glob("step*") if p.is_dir())
            for old in tags[:-max(1, self.recipe.train.keep_last)]:
                shutil.rmtree(old)
            # a conversion for another world size has served once this world has a checkpoint of its own
            shutil.rmtree(self.ckpt_dir / "universal", ignore_errors=True)
        dist.barrier()

    def global_batch(self) -> int:
        return self.recipe.data.batch_size * self.recipe.train.grad_accum * self.world

    def _latest_checkpoint(self) -> tuple[Path, int] | None:
        """(tag dir named by `latest`, how many processes wrote it), or None for a fresh run."""
        if not (self.ckpt_dir / "latest").exists():
            return None
        tag_dir = self.ckpt_dir / (self.ckpt_dir / "latest").read_text().strip()
        written_by = len(list(tag_dir.glob("rank*_state.pt")))
        if written_by == 0:
            raise ResumeError(f"{tag_dir} holds no rank*_state.pt: the checkpoint is incomplete")
        return tag_dir, written_by

    @staticmethod
    def _partitioned(tag_dir: Path) -> bool:
        # ZeRO 1-3 (and the bf16 optimizer) write optimizer state per rank; ZeRO 0 in fp32 writes it whole
        return any(tag_dir.glob("*optim_states.pt"))

    def _resume(self, tag_dir: Path, written_by: int, universal: bool) -> None:
        tag = tag_dir.name
        same_world = written_by == self.world
        rank_file = tag_dir / f"rank{self.rank if same_world else 0:03d}_state.pt"
        if not rank_file.exists():
            raise ResumeError(f"{rank_file} missing: the checkpoint {tag_dir} is incomplete")
        load_dir = self.ckpt_dir
        if universal:
            load_dir = self.ckpt_dir / "universal"
            failed = load_dir / f"{tag}.failed"
            if self.rank == 0:
                failed.unlink(missing_ok=True)   # a marker from an earlier attempt
            dist.barrier()
            if self.rank == 0 and not (load_dir / tag).exists():
                print(f"{tag} was written by {written_by} process(es), this run has {self.world}: converting it "
                      "to a universal checkpoint", flush=True)
                load_dir.mkdir(exist_ok=True)
                try:
                    convert_to_universal(tag_dir, load_dir / tag)
                except Exception as e:   # tell the waiting ranks why, rather than let them wait
                    failed.write_text(f"{type(e).__name__}: {e}")
                    raise
            elif self.rank != 0:
                wait_for_conversion(load_dir / tag, failed)
            dist.barrier()
        path, client = self.engine.load_checkpoint(str(load_dir), tag=tag)
        if path is None:
            raise ResumeError(f"could not load the checkpoint {tag_dir}")
        if universal and self.recipe.train.zero_stage == 3:
            mend_zero3_universal_load(self.engine.optimizer.optimizer, load_dir / tag)
        state = torch.load(rank_file, weights_only=True)
        self.checkpoint_plan = state.get("data_plan")
        self.step = int(client["step"])
        self.counters = {**self.counters, **client.get("counters", {})}
        self.data_position = int(state["data_position"])
        if state.get("position_unit") != "sample" and self.checkpoint_plan:
            self.data_position = position_from_batch_number(self.data_position, self.checkpoint_plan)
        if self.checkpoint_plan:  # world size and batch size are no longer part of what a position means
            self.checkpoint_plan = {k: v for k, v in self.checkpoint_plan.items() if k not in ("world", "batch_size")}
        if same_world:
            set_rng_state(state["rng"])
        else:  # one stream per rank cannot be split or merged: new ranks draw afresh, seeded by the step
            torch.manual_seed(self.recipe.train.seed * 1000 + self.rank + 1 + 1_000_003 * self.step)
        if self.rank == 0:
            print(f"resumed from {tag}: step {self.step}, data position {self.data_position}", flush=True)
            before = state.get("global_batch")
            if not same_world:
                print(f"resumed on {self.world} process(es) what {written_by} wrote"
                      + (" (via its universal checkpoint)" if universal else ""), flush=True)
            if before is not None and before != self.global_batch():
                print(f"warning: the global batch changes from {before} to {self.global_batch()} clips per step "
                      "(data.batch_size x train.grad_accum x processes); the LR schedule counts steps", flush=True)

    def export(self) -> Path | None:
        """Plain safetensors of the trainable weights (rank 0)."""
        from safetensors.torch import save_file

        if self.recipe.train.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        if self.rank != 0:
            return None
        path = self.out_dir / "student.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(path))
        return path

    # ------------------------------------------------------------ loop
    def _next_batch(self, batches):
        """Next batch with at least one clip; empty ones (all samples corrupt) only advance the position."""
        while True:
            batch = next(batches)
            self.data_position = batch["position"]
            self._skipped_this_step += batch["skipped"]
            if batch["video"] is not None:
                return batch

    # The collectives below run on the training device: NCCL takes no CPU tensors.
    def _all_ranks(self, flag: bool, op) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        if self.world > 1:
            dist.all_reduce(t, op=op)
        return bool(t.item() > 0)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        return self._all_ranks(bool(torch.isfinite(loss).item()), dist.ReduceOp.MIN)

    def _any_rank_stopping(self) -> bool:
        # a SIGTERM reaches the ranks at different moments; all of them must leave the loop after the
        # same step, or one would enter the checkpoint's collectives while another trains on
        return self._all_ranks(self._stop, dist.ReduceOp.MAX)

    def _sum_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def train(self) -> dict:
        tc, recipe = self.recipe.train, self.recipe
        loader, stream = make_loader(recipe.data, seed=tc.seed, rank=self.rank, world=self.world,
                                     start=self.data_position, pin_memory=self.device.type == "cuda",
                                     index=self.index)
        self.data_plan = stream.plan()
        self.samples_per_epoch = len(stream.index)
        self._check_data_plan()
        batches = iter(loader)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        last = {}
        try:
            while self.step < self.schedule.total_steps and not self._any_rank_stopping():
                last = self._train_step(batches)
                self.step += 1
                if self.step % tc.log_every == 0 or self.step == self.schedule.total_steps:
                    self.sink.log(self.step, last)
                if tc.ckpt_every and self.step % tc.ckpt_every == 0 and self.step < self.schedule.total_steps:
                    self.save()
                if tc.debug_kill_at_step and self.step == tc.debug_kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)
            self.save()
            if tc.export:
                self.export()
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.sink.close()
        return last

    def _shard_index(self) -> ShardIndex:
        """Every rank needs the index of every shard. On a cold cache the ranks first scan one share each, so a
        job of W processes reads the corpus's tar headers once rather than W times; then all read the cache."""
        shards = resolve_shards(self.recipe.data.shards)
        cache = index_cache_dir(self.recipe.data.index_cache)
        if self.world > 1 and cache is not None:
            ShardIndex.warm(shards[self.rank::self.world], cache)
            dist.barrier()
        return ShardIndex(shards, cache)

    def _check_data_plan(self) -> None:
        """A resumed run sees the checkpoint's clips in the checkpoint's order only if the loader's plan is
        the same; anything else would silently repeat some clips and never show others this epoch."""
        if not self.checkpoint_plan:
            return
        differences = plan_differences(self.checkpoint_plan, self.data_plan)
        if not differences:
            return
        if not self.recipe.train.allow_data_change:
            raise ResumeError("the data order differs from the checkpoint's, so this run would not continue it "
                              "exactly:\n  " + "\n  ".join(differences) +
                              "\nRestore those settings, or set train.allow_data_change=true to go on at sample "
                              f"position {self.data_position} of the new order")
        if self.rank == 0:
            print("warning: train.allow_data_change: going on at sample position "
                  f"{self.data_position} of a new data order (" + "; ".join(differences) + ")", flush=True)

    def _on_sigterm(self, signum, frame):  # finish the current step, checkpoint, exit
        self._stop = True

    def _train_step(self, batches) -> dict:
        tc = self.recipe.train
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        samples, teacher_s, student_s, data_s = 0, 0.0, 0.0, 0.0
        micro, nonfinite_in_a_row = 0, 0
        self._skipped_this_step = 0
        while micro < tc.grad_accum:
            td = time.perf_counter()
            batch = self._next_batch(batches)
            ta = time.perf_counter()
            inputs = self.objective.prepare(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            tb = time.perf_counter()
            loss, metrics = self.engine(**inputs)
            if not self._all_finite(loss):  # every rank drops this micro batch and draws another
                self.counters["nonfinite_steps"] += 1
                nonfinite_in_a_row += 1
                if nonfinite_in_a_row >= tc.max_nonfinite_in_a_row:   # the same on every rank: the flag is reduced
                    raise RuntimeError(f"{nonfinite_in_a_row} micro batches in a row gave a NaN/inf loss at step "
                                       f"{self.step + 1}: the run has diverged or a teacher is broken "
                                       f"(train.max_nonfinite_in_a_row)")
                continue
            nonfinite_in_a_row = 0
            if micro == tc.grad_accum - 1:
                # the rate this optimizer step applies (before the schedule advances), of the groups at
                # full rate: with layer-wise decay the others run at lr * decay^k
                lr = max(self.engine.get_lr())
            self.engine.backward(loss)
            self.engine.step()
            if micro == tc.grad_accum - 1 and not self.engine.was_step_applied():
                # DeepSpeed found non-finite gradients and skipped the update (and the schedule's step)
                self.counters["skipped_updates"] += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            tcend = time.perf_counter()
            data_s += ta - td
            teacher_s += tb - ta
            student_s += tcend - tb
            samples += batch["video"].shape[0]
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            micro += 1
        step_time = time.perf_counter() - t0
        # each rank skips the corrupt clips of its own share: the count kept (and checkpointed, from rank 0) is
        # the sum over ranks, so it is the same on every rank and survives a resume on another world size
        totals = self._sum_over_ranks({**{k: v / tc.grad_accum for k, v in sums.items()},
                                       "skipped": float(self._skipped_this_step)})
        self.counters["skipped_samples"] += int(totals.pop("skipped"))
        out = {k: v / self.world for k, v in totals.items()}
        total_samples = samples * self.world
        fl = self.flops_per_sample
        out.update({
            "lr": lr,
            "samples_per_s": total_samples / step_time,
            "step_time_s": step_time, "time/data_s": data_s, "time/teachers_s": teacher_s,
            "time/student_s": student_s,
            "tflops_per_s": (fl["student"] + fl["teachers"]) * total_samples / step_time / 1e12,
            "mfu": ((fl["student"] + fl["teachers"]) * samples / step_time / self.peak) if self.peak else None,
            "memory_gb": memory_gb(self.device),
            "data/skipped_samples": self.counters["skipped_samples"],
            "nonfinite_steps": self.counters["nonfinite_steps"],
            "skipped_updates": self.counters["skipped_updates"],
            "data/position": self.data_position,
            "data/epoch": self.data_position / self.samples_per_epoch,
        })
        return out


def train(recipe: Recipe) -> dict:
    """Run (or resume) a training run; returns the last step's metrics."""
    trainer = Trainer(recipe)
    return trainer.train()
