"""A resumable loader over a weighted mixture of shard sets, built from an objective's SampleSpec.

Order within one source. Every sample gets a global id (shard order, then position in the shard). Epoch e visits a
permutation of the ids drawn from (seed, e). A source's whole position is one integer, the sample position
P = e * len(index) + o: the first o ids of epoch e's permutation are consumed. From offset o, rank r of W takes
every W-th of the remaining ids, and consecutive runs of `batch_size` of them form its batches; together the ranks
consume the next batch_size * W ids of the permutation per batch, and the tail that cannot fill a batch on every
rank is dropped at the end of the epoch. A position therefore names the same samples whatever the world size or
batch size, so a run resumed on another number of processes, or with another per-rank batch, continues the epoch
without losing or repeating a sample.

The mixture. Global batch k (counted over the whole job) comes from one source, drawn from (seed, k) in
proportion to the weights, the same on every rank: an objective sees one kind of sample per step (image-text or
video-text, as the released stage-2 loaders alternate them), and every rank runs the same towers. The loader's
position is {"batches": k, "sources": {name: sample position}}, saved in checkpoints, so a resume continues every
source exactly. One source is the plain stream above.

Workers. Worker w of n builds batches k0 + w, k0 + w + n, ... (k0: the first batch of this start); the
DataLoader hands them out round-robin, which restores the order. Samples that cannot be decoded, or lack what
the spec requires, are dropped from their batch and counted by reason (`skipped`).
"""
from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ivtrain.config import DataConfig
from ivtrain.data.collate import collate as default_collate
from ivtrain.data.index import ShardIndex
from ivtrain.data.samples import SkipSample, read_sample
from ivtrain.data.spec import SampleSpec, VideoSpec


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ids 0..n-1 in `epoch` of a shuffled stream (the attentive probe's cache uses it too)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class Source:
    name: str
    index: ShardIndex
    weight: float = 1.0


class SourceStream:
    """One source's batches for one rank, from a sample position (module docstring)."""

    def __init__(self, index: ShardIndex, batch_size: int, seed: int, rank: int, world: int, start: int,
                 shuffle: bool, keep_last: bool = False, epochs: int | None = None):
        self.index, self.batch_size, self.seed, self.rank, self.world = index, batch_size, seed, rank, world
        self.start, self.shuffle, self.keep_last, self.epochs = start, shuffle, keep_last, epochs
        # training drops the partial last batch (every step the same size); evaluation keeps it, so that every
        # sample is seen once

    def segment(self, offset: int) -> tuple[int, int]:
        """(ids per rank, batches) of an epoch entered at `offset`: the ranks split what is left evenly."""
        per_rank = (len(self.index) - offset) // self.world
        b = self.batch_size
        return per_rank, (-(-per_rank // b) if self.keep_last else per_rank // b)

    def epoch_order(self, epoch: int, offset: int = 0) -> np.ndarray:
        """This rank's ids of `epoch` from `offset` on."""
        n = len(self.index)
        ids = epoch_permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
        per_rank, _ = self.segment(offset)
        return ids[offset:][self.rank::self.world][:per_rank]

    def batches(self):
        """(epoch, offset, batch number from that offset, sample position after the batch), from the start on."""
        n = len(self.index)
        epoch, offset = divmod(self.start, n)
        while self.epochs is None or epoch < self.epochs:
            per_rank, count = self.segment(offset)
            for b in range(count):
                consumed = min((b + 1) * self.batch_size, per_rank) * self.world
                after = (epoch + 1) * n if b == count - 1 else epoch * n + offset + consumed
                yield epoch, offset, b, after
            epoch, offset = epoch + 1, 0


def fresh_position(sources: list[Source]) -> dict:
    return {"batches": 0, "sources": {s.name: 0 for s in sources}}


class MixtureStream(IterableDataset):
    """An endless (or `epochs`-long, one source) stream of batches for one rank, from a mixture position."""

    def __init__(self, sources: list[Source], data: DataConfig, spec: SampleSpec, seed: int = 0, rank: int = 0,
                 world: int = 1, start: dict | None = None, epochs: int | None = None, keep_last: bool = False,
                 collate_fn: Callable[[list[dict], SampleSpec], dict] = default_collate):
        if epochs is not None and len(sources) != 1:
            raise ValueError("a stream of a fixed number of epochs has one source")
        self.sources, self.data, self.spec, self.seed = sources, data, spec, seed
        self.rank, self.world, self.epochs, self.keep_last = rank, world, epochs, keep_last
        self.start = start or fresh_position(sources)
        self.collate_fn = collate_fn
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        for s in sources:
            if self._stream(s, 0).segment(0)[1] == 0:
                raise ValueError(f"source {s.name}: {len(s.index)} samples cannot fill one batch of "
                                 f"{data.batch_size} on each of {world} rank(s)")

    def _stream(self, source: Source, start: int) -> SourceStream:
        return SourceStream(source.index, self.data.batch_size, self.seed, self.rank, self.world, start,
                            self.data.shuffle, self.keep_last, self.epochs)

    def source_stream(self, i: int = 0) -> SourceStream:
        """Source i's stream for this rank from the start position."""
        return self._stream(self.sources[i], self.start["sources"].get(self.sources[i].name, 0))

    def plan(self) -> dict:
        """Everything that decides which samples a position names. A resumed run continues exactly only if its plan
        equals the checkpoint's (the engine checks); world size and batch size are not part of it."""
        plan = {"seed": self.seed, "shuffle": self.data.shuffle, "sources": []}
        for s in self.sources:
            names = "\n".join(p.name for p in s.index.shards).encode()
            plan["sources"].append({"name": s.name, "weight": s.weight, "samples": len(s.index),
                                    "shards": len(s.index.shards),
                                    "shard_names_sha256": hashlib.sha256(names).hexdigest()[:16]})
        return plan

    def choose(self, k: int) -> int:
        """The source of global batch k: drawn from (seed, k), the same on every rank and worker."""
        if len(self.sources) == 1:
            return 0
        return int(np.random.default_rng([self.seed, 2, k]).choice(len(self.sources), p=self.probabilities))

    def schedule(self):
        """(source number, epoch, offset, batch number, position after the batch) for every batch from the start."""
        positions = dict(self.start["sources"])
        generators = [self._stream(s, positions.get(s.name, 0)).batches() for s in self.sources]
        k = self.start["batches"]
        while True:
            i = self.choose(k)
            try:
                epoch, offset, b, after = next(generators[i])
            except StopIteration:   # a stream of a fixed number of epochs has ended
                return
            positions[self.sources[i].name] = after
            k += 1
            yield i, epoch, offset, b, {"batches": k, "sources": dict(positions)}

    def make_batch(self, i: int, epoch: int, offset: int, b: int, position: dict, orders: dict) -> dict:
        source = self.sources[i]
        if (i, epoch, offset) not in orders:
            orders.pop(next((key for key in orders if key[0] == i), None), None)
            orders[i, epoch, offset] = self._stream(source, 0).epoch_order(epoch, offset)
        ids = orders[i, epoch, offset][b * self.data.batch_size:(b + 1) * self.data.batch_size]
        spec = self.spec.for_source(source.name)
        samples, skipped = [], {}
        for sid in ids.tolist():
            try:
                samples.append(read_sample(source.index, sid, epoch, spec, self.data, self.seed))
            except SkipSample as e:
                skipped[e.reason] = skipped.get(e.reason, 0) + 1
            except Exception:  # a corrupt sample costs one slot of this batch, never the run
                skipped["undecodable"] = skipped.get("undecodable", 0) + 1
        batch = self.collate_fn(samples, spec)
        batch.update(source=source.name, epoch=epoch, position=position, skipped=skipped)
        return batch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        orders: dict = {}
        for n, (i, epoch, offset, b, position) in enumerate(self.schedule()):
            if n % workers == worker:
                yield self.make_batch(i, epoch, offset, b, position, orders)


def _keep_batches(batch):
    return batch  # batches are built in the workers; the DataLoader must not collate again


def _outlive_first_sigterm(worker_id: int) -> None:
    # torchrun and Slurm stop a job by sending SIGTERM to its whole process group. The trainer answers by
    # finishing its step and checkpointing, which needs these workers alive: they let the first SIGTERM
    # pass and fall to the next one (the launcher's second signal). The trainer shuts its workers down
    # itself when it leaves the loop (`close_loader`), so no exit waits on a worker that outlived a signal.
    def rearm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, rearm)


def make_loader(stream: MixtureStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """pin_memory: for a CUDA consumer, whose `.to(device, non_blocking=True)` is then a direct, asynchronous copy."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_keep_batches,
                      prefetch_factor=2 if num_workers > 0 else None, pin_memory=pin_memory,
                      persistent_workers=False, worker_init_fn=_outlive_first_sigterm,
                      # its own generator: starting an iterator must not draw from the global RNG,
                      # or a resumed run's masks would drift from the uninterrupted run's
                      generator=torch.Generator().manual_seed(stream.seed))


def close_loader(iterator) -> None:
    """Stop a DataLoader iterator's workers now (they exit on their own signal, not the interpreter's exit, which
    would wait on a worker that let a SIGTERM pass: a trainer that raised would hang instead of exiting)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def video_stream(data: DataConfig, frames: int, seed: int = 0, rank: int = 0, world: int = 1, start: int = 0,
                 epochs: int | None = None, index: ShardIndex | None = None, keep_last: bool = False,
                 images: bool = False) -> MixtureStream:
    """A one-source stream of `frames`-frame clips of data.image_size (evaluation, tiny teachers, benchmarks):
    batches carry video, labels, keys and clip seeds."""
    index = index or ShardIndex.open(data.shards, data.index_cache)
    spec = SampleSpec(video=VideoSpec(frames=frames, size=data.image_size), images=images)
    source = Source("default", index)
    return MixtureStream([source], data, spec, seed, rank, world,
                         {"batches": 0, "sources": {"default": start}}, epochs, keep_last)


def video_loader(data: DataConfig, frames: int, seed: int = 0, start: int = 0, epochs: int | None = None,
                 index: ShardIndex | None = None, keep_last: bool = False,
                 pin_memory: bool = False) -> tuple[DataLoader, MixtureStream]:
    stream = video_stream(data, frames, seed, start=start, epochs=epochs, index=index, keep_last=keep_last)
    return make_loader(stream, data.num_workers, pin_memory), stream
