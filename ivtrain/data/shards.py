"""A resumable clip loader over ivkit WebDataset shards.

The shard format (docs/ARCHITECTURE.md) is the whole contract: tars whose samples are `K.mp4`
+ `K.json` (+ optional members), listed by a `.wids.json` index or a `.txt` shard list.

Order and resume. Every sample gets a global id (shard order, then position in the shard).
Epoch e visits a permutation of the ids drawn from (seed, e). The loader's whole position is one
integer, the sample position P = e * len(index) + o: the first o ids of epoch e's permutation are
consumed. From offset o, rank r of W takes every W-th of the remaining ids, and consecutive runs of
`batch_size` of them form its batches; together the ranks consume the next batch_size * W ids of
the permutation per step, and the tail that cannot fill a batch on every rank is dropped at the end
of the epoch. A position therefore names the same clips whatever the world size or batch size, so
a run resumed on another number of processes, or with another per-rank batch, continues the epoch
without losing or repeating a clip. Worker w of n builds batches w, w+n, ... of the stream; the
DataLoader hands them out round-robin, which restores the order. Augmentation randomness (and the
per-clip seed the objective draws masks from) comes from (seed, epoch, sample id), so a resumed run
sees exactly the same clips, crops, flips and masks. Undecodable samples are dropped from their
batch and counted (`skipped`).
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


def clip_seed(seed: int, epoch: int, sample_id: int) -> int:
    """A 64-bit seed that belongs to one clip in one epoch, whatever rank, batch or worker loads it (masks)."""
    return int(np.random.SeedSequence([seed, epoch, sample_id, 1]).generate_state(1, np.uint64)[0])


class ClipStream(IterableDataset):
    """An endless stream of batches for one rank, starting at a sample position (module docstring)."""

    def __init__(self, index: ShardIndex, cfg: DataConfig, seed: int = 0, rank: int = 0, world: int = 1,
                 start: int = 0, epochs: int | None = None, keep_last: bool = False):
        self.index, self.cfg, self.seed = index, cfg, seed
        self.rank, self.world, self.start, self.epochs = rank, world, start, epochs
        # training drops the partial last batch (every step the same size); evaluation keeps it, so that
        # every clip is seen once
        self.keep_last = keep_last
        if self.segment(0)[1] == 0:
            raise ValueError(f"{len(index)} samples cannot fill one batch of {cfg.batch_size} on each of "
                             f"{world} rank(s)")

    def plan(self) -> dict:
        """Everything that decides which clips a sample position names. A resumed run continues exactly only
        if its plan equals the checkpoint's (the engine checks); world size and batch size are not part of it."""
        names = "\n".join(s.name for s in self.index.shards).encode()
        return {"seed": self.seed, "shuffle": self.cfg.shuffle, "samples": len(self.index),
                "shards": len(self.index.shards), "shard_names_sha256": hashlib.sha256(names).hexdigest()[:16]}

    def segment(self, offset: int) -> tuple[int, int]:
        """(ids per rank, batches) of an epoch entered at `offset`: the ranks split what is left evenly."""
        per_rank = (len(self.index) - offset) // self.world
        b = self.cfg.batch_size
        return per_rank, (-(-per_rank // b) if self.keep_last else per_rank // b)

    def epoch_order(self, epoch: int, offset: int = 0) -> np.ndarray:
        """This rank's ids of `epoch` from `offset` on."""
        ids = epoch_permutation(len(self.index), self.seed, epoch) if self.cfg.shuffle else np.arange(len(self.index))
        per_rank, _ = self.segment(offset)
        return ids[offset:][self.rank::self.world][:per_rank]

    def batches(self):
        """(epoch, offset, batch number from that offset, sample position after the batch), from the start on."""
        n = len(self.index)
        epoch, offset = divmod(self.start, n)
        while self.epochs is None or epoch < self.epochs:
            per_rank, count = self.segment(offset)
            for b in range(count):
                consumed = min((b + 1) * self.cfg.batch_size, per_rank) * self.world
                after = (epoch + 1) * n if b == count - 1 else epoch * n + offset + consumed
                yield epoch, offset, b, after
            epoch, offset = epoch + 1, 0

    def load(self, sample_id: int, epoch: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, epoch, sample_id]) if cfg.train else None
        data = self.index.read(sample_id, "mp4")
        frames, _ = decode_clip(data, cfg.teacher_frames, rng)
        video = clip_transform(frames, cfg.image_size, cfg.train, cfg.scales, cfg.max_distort, cfg.flip, rng)
        return video, self.index.metadata(sample_id)

    def make_batch(self, epoch: int, offset: int, b: int, after: int, orders: dict) -> dict:
        if (epoch, offset) not in orders:
            orders.clear()
            orders[epoch, offset] = self.epoch_order(epoch, offset)
        ids = orders[epoch, offset][b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size]
        videos, keys, labels, seeds, skipped = [], [], [], [], 0
        for sid in ids.tolist():
            try:
                video, meta = self.load(sid, epoch)
            except Exception:  # a corrupt sample costs one slot of this batch, never the run
                skipped += 1
                continue
            videos.append(video)
            keys.append(self.index.samples[sid].key)
            labels.append(meta.get(self.cfg.label_key))
            seeds.append(clip_seed(self.seed, epoch, sid))
        return {"video": torch.stack(videos) if videos else None, "keys": keys, "labels": labels,
                "clip_seeds": seeds, "epoch": epoch, "position": after, "skipped": skipped}

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        orders: dict = {}
        for i, where in enumerate(self.batches()):
            if i % workers == worker:
                yield self.make_batch(*where, orders)


def _keep_lists(batch):
    return batch  # batches are built in the workers; the DataLoader must not collate again


def _outlive_first_sigterm(worker_id: int) -> None:
    # torchrun and Slurm stop a job by sending SIGTERM to its whole process group. The trainer answers by
    # finishing its step and checkpointing, which needs these workers alive: they let the first SIGTERM
    # pass and fall to the next one (the DataLoader's own shutdown, or the launcher's second signal).
    def rearm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, rearm)


def make_loader(cfg: DataConfig, seed: int = 0, rank: int = 0, world: int = 1, start: int = 0,
                epochs: int | None = None, index: ShardIndex | None = None, keep_last: bool = False,
                pin_memory: bool = False) -> tuple[DataLoader, ClipStream]:
    """pin_memory: for a CUDA consumer, whose `.to(device, non_blocking=True)` is then a direct, asynchronous copy."""
    index = index or ShardIndex(resolve_shards(cfg.shards))
    stream = ClipStream(index, cfg, seed, rank, world, start, epochs, keep_last)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, collate_fn=_keep_lists,
                        prefetch_factor=2 if cfg.num_workers > 0 else None, pin_memory=pin_memory,
                        persistent_workers=False, worker_init_fn=_outlive_first_sigterm,
                        # its own generator: starting an iterator must not draw from the global RNG,
                        # or a resumed run's masks would drift from the uninterrupted run's
                        generator=torch.Generator().manual_seed(seed))
    return loader, stream
