"""A resumable clip loader over ivkit WebDataset shards.

The shard format (docs/ARCHITECTURE.md) is the whole contract: tars whose samples are `K.mp4`
+ `K.json` (+ optional members), listed by a `.wids.json` index or a `.txt` shard list.

Order and resume. Every sample gets a global id (shard order, then position in the shard).
Epoch e visits a permutation of the ids drawn from (seed, e); rank r takes every world-th id,
and consecutive runs of `batch_size` ids form batches. Batches are numbered globally across
epochs, so the loader's whole position is one integer: the number of the next batch. Worker w
of n builds batches start+w, start+w+n, ...; the DataLoader hands them out round-robin, which
restores the global order. Augmentation randomness is drawn from (seed, epoch, sample id), so a
resumed run sees exactly the same clips, crops and flips. Undecodable samples are dropped from
their batch and counted (`skipped`).
"""
from __future__ import annotations

import hashlib
import json
import signal
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ivtrain.config import DataConfig
from ivtrain.data.sampling import decode_clip
from ivtrain.data.transforms import clip_transform


def resolve_shards(spec: str | Path | list) -> list[Path]:
    """Shard paths from a .wids.json index, a .txt list, a directory, a .tar, or a list of those."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in resolve_shards(s)]
    spec = str(spec)
    if "," in spec:
        return resolve_shards(spec.split(","))
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"shard source {path} does not exist")
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
    elif path.name.endswith(".json"):
        index = json.loads(path.read_text())
        if "shardlist" not in index:
            raise ValueError(f"{path} is not a wids index (no 'shardlist')")
        shards = [(path.parent / e["url"]) if not Path(e["url"]).is_absolute() else Path(e["url"])
                  for e in index["shardlist"]]
    elif path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        shards = [Path(ln) if Path(ln).is_absolute() else path.parent / ln for ln in lines]
        shards = [s if s.exists() else Path(ln) for s, ln in zip(shards, lines)]
    elif path.suffix == ".tar":
        shards = [path]
    else:
        raise ValueError(f"cannot read shards from {path}: give a .wids.json, .txt, .tar or a directory")
    if not shards:
        raise ValueError(f"no shards found in {path}")
    missing = [s for s in shards if not s.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed shard(s) missing, e.g. {missing[0]}")
    return shards


@dataclass(frozen=True)
class SampleRef:
    shard: int
    key: str
    members: dict  # extension -> (offset, size)


class ShardIndex:
    """Byte offsets of every member of every sample, from one pass over the tar headers."""

    def __init__(self, shards: list[Path]):
        self.shards = [Path(s) for s in shards]
        self.samples: list[SampleRef] = []
        for si, shard in enumerate(self.shards):
            members: dict[str, dict] = {}
            order: list[str] = []
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    name = info.name.rsplit("/", 1)[-1]
                    if "." not in name:
                        continue
                    key, ext = name.split(".", 1)
                    if key not in members:
                        members[key] = {}
                        order.append(key)
                    members[key][ext] = (info.offset_data, info.size)
            self.samples.extend(SampleRef(si, k, members[k]) for k in order if "mp4" in members[k])
        if not self.samples:
            raise ValueError(f"no samples with an mp4 member in {len(self.shards)} shard(s)")

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int, ext: str) -> bytes | None:
        ref = self.samples[i]
        if ext not in ref.members:
            return None
        offset, size = ref.members[ext]
        with open(self.shards[ref.shard], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def metadata(self, i: int) -> dict:
        raw = self.read(i, "json")
        return json.loads(raw) if raw else {}


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ids 0..n-1 in `epoch` of a shuffled stream (the attentive probe's cache uses it too)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class ClipStream(IterableDataset):
    """An endless, position-addressable stream of batches for one rank."""

    def __init__(self, index: ShardIndex, cfg: DataConfig, seed: int = 0, rank: int = 0, world: int = 1,
                 start_batch: int = 0, epochs: int | None = None, keep_last: bool = False):
        self.index, self.cfg, self.seed = index, cfg, seed
        self.rank, self.world, self.start_batch, self.epochs = rank, world, start_batch, epochs
        self.per_rank = len(index) // world
        # training drops the partial last batch (every step the same size); evaluation keeps it, so that
        # every clip is seen once
        self.batches_per_epoch = -(-self.per_rank // cfg.batch_size) if keep_last else self.per_rank // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(index)} samples cannot fill one batch of {cfg.batch_size} on each of "
                             f"{world} rank(s)")

    def plan(self) -> dict:
        """Everything that decides which clips batch n holds on this rank. A resumed run continues exactly
        only if its plan equals the checkpoint's (the engine checks)."""
        names = "\n".join(s.name for s in self.index.shards).encode()
        return {"world": self.world, "batch_size": self.cfg.batch_size, "seed": self.seed,
                "shuffle": self.cfg.shuffle, "samples": len(self.index), "shards": len(self.index.shards),
                "shard_names_sha256": hashlib.sha256(names).hexdigest()[:16]}

    def epoch_order(self, epoch: int) -> np.ndarray:
        ids = epoch_permutation(len(self.index), self.seed, epoch) if self.cfg.shuffle else np.arange(len(self.index))
        return ids[self.rank::self.world][:self.per_rank]

    def load(self, sample_id: int, epoch: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, epoch, sample_id]) if cfg.train else None
        data = self.index.read(sample_id, "mp4")
        frames, _ = decode_clip(data, cfg.teacher_frames, rng)
        video = clip_transform(frames, cfg.image_size, cfg.train, cfg.scales, cfg.max_distort, cfg.flip, rng)
        return video, self.index.metadata(sample_id)

    def make_batch(self, batch_number: int, orders: dict) -> dict:
        epoch, b = divmod(batch_number, self.batches_per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = self.epoch_order(epoch)
        ids = orders[epoch][b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size]
        videos, keys, labels, skipped = [], [], [], 0
        for sid in ids.tolist():
            try:
                video, meta = self.load(sid, epoch)
            except Exception:  # a corrupt sample costs one slot of this batch, never the run
                skipped += 1
                continue
            videos.append(video)
            keys.append(self.index.samples[sid].key)
            labels.append(meta.get(self.cfg.label_key))
        return {"video": torch.stack(videos) if videos else None, "keys": keys, "labels": labels,
                "batch_number": batch_number, "skipped": skipped}

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        end = None if self.epochs is None else self.epochs * self.batches_per_epoch
        n = self.start_batch + worker
        orders: dict = {}
        while end is None or n < end:
            yield self.make_batch(n, orders)
            n += workers


def _keep_lists(batch):
    return batch  # batches are built in the workers; the DataLoader must not collate again


def _outlive_first_sigterm(worker_id: int) -> None:
    # torchrun and Slurm stop a job by sending SIGTERM to its whole process group. The trainer answers by
    # finishing its step and checkpointing, which needs these workers alive: they let the first SIGTERM
    # pass and fall to the next one (the DataLoader's own shutdown, or the launcher's second signal).
    def rearm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, rearm)


def make_loader(cfg: DataConfig, seed: int = 0, rank: int = 0, world: int = 1, start_batch: int = 0,
                epochs: int | None = None, index: ShardIndex | None = None, keep_last: bool = False,
                pin_memory: bool = False) -> tuple[DataLoader, ClipStream]:
    """pin_memory: for a CUDA consumer, whose `.to(device, non_blocking=True)` is then a direct, asynchronous copy."""
    index = index or ShardIndex(resolve_shards(cfg.shards))
    stream = ClipStream(index, cfg, seed, rank, world, start_batch, epochs, keep_last)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, collate_fn=_keep_lists,
                        prefetch_factor=2 if cfg.num_workers > 0 else None, pin_memory=pin_memory,
                        persistent_workers=False, worker_init_fn=_outlive_first_sigterm,
                        # its own generator: starting an iterator must not draw from the global RNG,
                        # or a resumed run's masks would drift from the uninterrupted run's
                        generator=torch.Generator().manual_seed(seed))
    return loader, stream
