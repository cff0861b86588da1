"""The training loop: set-up in the order that reports bad input before DeepSpeed starts, then steps, logging,
checkpoints, SIGTERM handling and the final export. It knows nothing about stages: it asks the objective
(ivtrain.objectives.base) for the sample spec, the parameter groups, `prepare`, the trainable module, FLOPs and
exports, and nothing else.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch

from ivtrain.config import Recipe, to_dict
from ivtrain.data.index import ShardIndex, check_against_wids, index_cache_dir, resolve_shards
from ivtrain.data.loader import MixtureStream, Source, close_loader, fresh_position, make_loader
from ivtrain.data.samples import SKIP_REASONS
from ivtrain.data.spec import check_source
from ivtrain.devices import pick_device
from ivtrain.engine.checkpoint import Checkpoints, describe, plan_differences
from ivtrain.engine.deepspeed_setup import ResumeError, recipe_deepspeed_config, undo_initialization_step
from ivtrain.engine.distributed import DistContext, setup_distributed
from ivtrain.engine.metrics import MetricsSink, memory_gb, peak_flops
from ivtrain.export import write_export
from ivtrain.optim import lr_factor, resolve_schedule


class SetupError(ValueError):
    """The run cannot start: bad data, missing models, a spec the shards cannot satisfy. Raised before any step."""


class Trainer:
    def __init__(self, recipe: Recipe):
        import deepspeed

        from ivtrain.objectives import build_objective

        self.recipe = recipe
        tc = recipe.train
        self.device = pick_device(tc.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        rank, world = setup_distributed(self.device)
        self.dist = DistContext(rank=rank, world=world, device=self.device)
        self.out_dir = Path(tc.out_dir)
        if rank == 0:
            (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.out_dir / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2))
        self.dist.barrier()

        # the same seed on every rank for the weights; rank-specific streams afterwards (stochastic depth)
        torch.manual_seed(tc.seed)
        try:
            self.objective = build_objective(recipe, self.device, self.dist)
            self.spec = self.objective.sample_spec()
            self.sources = self._open_sources()
            self.schedule = resolve_schedule(recipe.optim, tc.steps, tc.epochs, self.global_batch(),
                                             sum(len(s.index) for s in self.sources))
        except (OSError, ValueError) as e:   # missing dirs and shards, unsatisfiable specs, bad tokenizers
            raise SetupError(str(e)) from e
        model = self.objective.trainable
        scalars = [n for n, p in model.named_parameters() if p.dim() == 0]
        if scalars:   # DeepSpeed (0.19) views every parameter as bytes to broadcast it, which a 0-dim tensor refuses
            raise SetupError(f"DeepSpeed cannot broadcast 0-dim parameters: give {', '.join(scalars)} the shape (1,)")
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        optimizer = torch.optim.AdamW(self.objective.param_groups(recipe.optim, self.schedule.peak_lr),
                                      lr=self.schedule.peak_lr, betas=tuple(recipe.optim.betas), eps=recipe.optim.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, self.schedule))
        self.checkpoints = Checkpoints(self.out_dir, self.dist, tc.keep_last, frozen)
        latest = self.checkpoints.latest() if tc.resume else None
        universal = self.checkpoints.needs_universal(latest)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=recipe_deepspeed_config(recipe, world, universal))
        undo_initialization_step(self.engine.optimizer)
        torch.manual_seed(tc.seed * 1000 + rank + 1)
        self.step = 0
        self.position = fresh_position(self.sources)
        self.counters: dict[str, float] = {"nonfinite_steps": 0, "skipped_updates": 0}
        self.checkpoint_plan: dict | None = None   # the data plan of the checkpoint resumed from
        if latest is not None:
            self._resume(latest, universal)
        self.peak = peak_flops(tc.peak_tflops, self.device)
        self.sink = MetricsSink(self.out_dir, rank == 0, tc.tensorboard, self.objective.throughput_unit, self.step)
        self._stop = False

    # ------------------------------------------------------------ data
    def _open_sources(self) -> list[Source]:
        """Every rank needs the index of every shard. On a cold cache the ranks first scan one share each, so a job
        of W processes reads the corpus's tar headers once rather than W times; then all read the cache."""
        data, sources = self.recipe.data, []
        cache = index_cache_dir(data.index_cache)
        for s in data.source_list():
            shards = resolve_shards(s.shards)
            if self.dist.world > 1 and cache is not None:
                ShardIndex.warm(shards[self.dist.rank::self.dist.world], cache)
                self.dist.barrier()
            index = ShardIndex(shards, cache)
            check_against_wids(s.shards, index)
            check_source(s.name, s.shards, index, self.spec.for_source(s.name))
            sources.append(Source(s.name, index, s.weight))
        return sources

    def global_batch(self) -> int:
        return self.recipe.data.batch_size * self.recipe.train.grad_accum * self.dist.world

    # ------------------------------------------------------------ checkpoints
    def save(self) -> None:
        self.checkpoints.save(self.engine, self.step, self.counters, self.position, self.data_plan,
                              self.global_batch())

    def _resume(self, latest, universal: bool) -> None:
        r = self.checkpoints.resume(self.engine, latest, universal, self.recipe.train.zero_stage,
                                    self.recipe.train.seed)
        self.step, self.position, self.checkpoint_plan = r.step, r.position, r.plan
        if "skipped_samples" in r.counters:   # a checkpoint from before skip reasons: all were undecodable
            r.counters["data/skipped/undecodable"] = r.counters.pop("skipped_samples")
        self.counters.update(r.counters)
        if self.dist.rank == 0:
            print(f"resumed from {latest[0].name}: step {self.step}, data position {describe(self.position)}",
                  flush=True)
            if r.written_by != self.dist.world:
                print(f"resumed on {self.dist.world} process(es) what {r.written_by} wrote"
                      + (" (via its universal checkpoint)" if universal else ""), flush=True)
            if r.global_batch is not None and r.global_batch != self.global_batch():
                print(f"warning: the global batch changes from {r.global_batch} to {self.global_batch()} samples a "
                      "step (data.batch_size x train.grad_accum x processes); the LR schedule counts steps", flush=True)

    def _check_data_plan(self) -> None:
        """A resumed run sees the checkpoint's samples in the checkpoint's order only if the loader's plan is
        the same; anything else would silently repeat some samples and never show others this epoch."""
        if not self.checkpoint_plan:
            return
        differences = plan_differences(self.checkpoint_plan, self.data_plan)
        if not differences:
            return
        where = f"sample position {describe(self.position)}"
        if not self.recipe.train.allow_data_change:
            raise ResumeError("the data order differs from the checkpoint's, so this run would not continue it "
                              "exactly:\n  " + "\n  ".join(differences) + "\nRestore those settings, or set "
                              f"train.allow_data_change=true to go on at {where} of the new order")
        if self.dist.rank == 0:
            print(f"warning: train.allow_data_change: going on at {where} of a new data order ("
                  + "; ".join(differences) + ")", flush=True)

    def export(self) -> None:
        """The objective's artifacts as safetensors, with export.json (rank 0)."""
        if self.recipe.train.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        if self.dist.rank != 0:
            return
        sd = {k: v.detach().cpu() for k, v in sd.items()}
        write_export(self.out_dir, self.objective.name, self.objective.export(sd), self.objective.encoder_config())

    # ------------------------------------------------------------ loop
    def train(self) -> dict:
        tc = self.recipe.train
        stream = MixtureStream(self.sources, self.recipe.data, self.spec, tc.seed, self.dist.rank, self.dist.world,
                               self.position, collate_fn=self.objective.collate)
        self.data_plan = stream.plan()
        self._check_data_plan()
        batches = iter(make_loader(stream, self.recipe.data.num_workers, pin_memory=self.device.type == "cuda"))
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        last: dict = {}
        try:
            while self.step < self.schedule.total_steps and not self.dist.any(self._stop):
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
            # the loader's workers go now, whether the loop ended or raised: left to the interpreter's exit they
            # would be joined without a time limit, and a trainer that raised would hang instead of exiting
            close_loader(batches)
            signal.signal(signal.SIGTERM, previous)
            self.sink.close()
        return last

    def _on_sigterm(self, signum, frame):  # finish the current step, checkpoint, exit
        self._stop = True

    def _next_batch(self, batches, skipped: dict) -> dict:
        """Next batch with at least one sample on every rank. One that some rank has nothing of (all its samples
        skipped) only advances the position, on every rank (ranks must run the same steps); its samples on the
        other ranks are counted under `rank_empty`."""
        while True:
            batch = next(batches)
            self.position = batch["position"]
            for reason, n in batch["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
            if self.dist.all(batch["size"] > 0):
                return batch
            skipped["rank_empty"] = skipped.get("rank_empty", 0) + batch["size"]

    def _train_step(self, batches) -> dict:
        tc, objective = self.recipe.train, self.objective
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        flops: dict[str, float] = {}
        skipped: dict[str, int] = {}
        samples = units = 0
        prepare_s = trainable_s = data_s = 0.0
        micro = nonfinite_in_a_row = 0
        while micro < tc.grad_accum:
            td = time.perf_counter()
            batch = self._next_batch(batches, skipped)
            ta = time.perf_counter()
            inputs = objective.prepare(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            tb = time.perf_counter()
            loss, metrics = self.engine(**inputs)
            if not self.dist.all(bool(torch.isfinite(loss).item())):  # every rank drops this micro batch
                self.counters["nonfinite_steps"] += 1
                nonfinite_in_a_row += 1
                if nonfinite_in_a_row >= tc.max_nonfinite_in_a_row:   # the same on every rank: the flag is reduced
                    raise RuntimeError(f"{nonfinite_in_a_row} micro batches in a row gave a NaN/inf loss at step "
                                       f"{self.step + 1}: the run has diverged or a teacher is broken "
                                       f"(train.max_nonfinite_in_a_row)")
                continue
            nonfinite_in_a_row = 0
            if micro == tc.grad_accum - 1:
                # the rate this optimizer step applies (before the schedule advances), of the groups at full
                # rate: with layer-wise decay or tower multipliers the others run at a fraction of it
                lr = max(self.engine.get_lr())
            self.engine.backward(loss)
            self.engine.step()
            if micro == tc.grad_accum - 1 and not self.engine.was_step_applied():
                # DeepSpeed found non-finite gradients and skipped the update (and the schedule's step)
                self.counters["skipped_updates"] += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            tc_end = time.perf_counter()
            data_s, prepare_s, trainable_s = data_s + ta - td, prepare_s + tb - ta, trainable_s + tc_end - tb
            samples += batch["size"]
            units += objective.count(batch)
            for k, v in objective.flops(batch).items():
                flops[k] = flops.get(k, 0.0) + v
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            micro += 1
        step_time = time.perf_counter() - t0
        return self._step_metrics(sums, flops, skipped, samples, units, lr, step_time, data_s, prepare_s, trainable_s)

    def _step_metrics(self, sums, flops, skipped, samples, units, lr, step_time, data_s, prepare_s,
                      trainable_s) -> dict:
        tc = self.recipe.train
        # each rank skips the bad samples of its own share: the counts kept (and checkpointed) are sums over
        # ranks, so they are the same on every rank and survive a resume on another world size
        totals = self.dist.sum({**{k: v / tc.grad_accum for k, v in sums.items()},
                                **{f"skipped/{r}": float(skipped.get(r, 0)) for r in SKIP_REASONS},
                                "samples": float(samples), "units": float(units), "flops": sum(flops.values())})
        for r in SKIP_REASONS:
            n = int(totals.pop(f"skipped/{r}"))
            if n or f"data/skipped/{r}" in self.counters:
                self.counters[f"data/skipped/{r}"] = self.counters.get(f"data/skipped/{r}", 0) + n
        all_samples, all_units, all_flops = totals.pop("samples"), totals.pop("units"), totals.pop("flops")
        out = {k: v / self.dist.world for k, v in totals.items()}
        unit = self.objective.throughput_unit
        out.update({"lr": lr, "samples_per_s": all_samples / step_time, f"{unit}_per_s": all_units / step_time,
                    "step_time_s": step_time, "time/data_s": data_s, f"time/{self.objective.prepare_name}_s": prepare_s,
                    "time/trainable_s": trainable_s, "tflops_per_s": all_flops / step_time / 1e12,
                    "mfu": (all_flops / self.dist.world / step_time / self.peak) if self.peak else None,
                    "memory_gb": memory_gb(self.device),
                    "data/skipped_samples": sum(v for k, v in self.counters.items() if k.startswith("data/skipped/")),
                    "nonfinite_steps": self.counters["nonfinite_steps"],
                    "skipped_updates": self.counters["skipped_updates"],
                    **{k: v for k, v in self.counters.items() if k.startswith("data/skipped/")}})
        out.update(self._position_metrics())
        return out

    def _position_metrics(self) -> dict:
        positions = self.position["sources"]
        if len(self.sources) == 1:
            (source,) = self.sources
            return {"data/position": positions[source.name], "data/epoch": positions[source.name] / len(source.index)}
        out = {"data/position": sum(positions.values())}
        for s in self.sources:
            out[f"data/{s.name}/position"] = positions[s.name]
            out[f"data/{s.name}/epoch"] = positions[s.name] / len(s.index)
        return out


def train(recipe: Recipe) -> dict:
    """Run (or resume) a training run; returns the last step's metrics."""
    return Trainer(recipe).train()
