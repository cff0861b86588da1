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
import os
import signal
import tarfile
import warnings
import zipfile
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
    if path.name.endswith(".json"):
        check_against_wids(path)
    return shards


def check_against_wids(spec: str | Path | list, index: "ShardIndex | None" = None) -> None:
    """Refuse a shard that is not what the .wids.json index listing it says: a copy cut short keeps a readable
    tar (cut at a member boundary, tar readers stop there without a word) and the run would train on fewer
    clips than the index promises. File sizes are checked with a stat (resolve_shards); sample counts against
    an index's per-shard scan (ShardIndex.open), which counts samples with an mp4 member, as the loader does.
    Shards given by a .txt list, a directory or a .tar have no index to be checked against."""
    if isinstance(spec, (list, tuple)) or "," in str(spec):
        for part in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")):
            check_against_wids(part, index)
        return
    path = Path(spec)
    if not path.name.endswith(".json"):
        return
    clips = {}
    if index is not None:
        for i, n in enumerate(np.bincount(index.shard_of, minlength=len(index.shards))):
            clips[index.shards[i]] = int(n)
    for e in json.loads(path.read_text())["shardlist"]:
        shard = Path(e["url"]) if Path(e["url"]).is_absolute() else path.parent / e["url"]
        size = shard.stat().st_size
        if "filesize" in e and size != e["filesize"]:
            raise ValueError(f"shard {shard} has {size} bytes, its index {path} says {e['filesize']}: the file is "
                             "cut short or replaced; copy it again (or rebuild the index)")
        if shard in clips and "nsamples" in e and clips[shard] != e["nsamples"]:
            raise ValueError(f"shard {shard} holds {clips[shard]} clips (samples with an mp4), its index {path} "
                             f"says {e['nsamples']}: the file is cut short or replaced; copy it again (or rebuild "
                             "the index)")


MEMBERS = ("mp4", "json")   # the members the loader reads; a sample without an mp4 is not a clip
INDEX_VERSION = 1


def index_cache_dir(setting: str) -> Path | None:
    """Where per-shard indexes are kept: `data.index_cache` ("" -> $XDG_CACHE_HOME/ivkit/shard_index, "off" -> none)."""
    if setting == "off":
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ivkit" / "shard_index"


def scan_shard(shard: Path) -> dict[str, np.ndarray]:
    """One pass over a tar's headers: every sample's key and the (offset, size) of its mp4 and json members
    (-1 where absent), in shard order. tarfile reads the headers, so GNU and pax long names are understood."""
    members: dict[str, dict] = {}
    with tarfile.open(shard, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            if "." not in name:
                continue
            key, ext = name.split(".", 1)
            if ext in MEMBERS:
                members.setdefault(key, {})[ext] = (info.offset_data, info.size)
    keys = [k for k, m in members.items() if "mp4" in m]   # dicts keep the order keys first appeared in
    out = {"keys": np.array([k.encode() for k in keys], dtype=bytes) if keys else np.zeros(0, "S1")}
    for ext in MEMBERS:
        out[ext] = np.array([members[k].get(ext, (-1, -1)) for k in keys], dtype=np.int64).reshape(-1, 2)
    return out


def _stamp(shard: Path) -> np.ndarray:
    st = shard.stat()
    return np.array([INDEX_VERSION, st.st_size, st.st_mtime_ns], dtype=np.int64)


def _cache_file(shard: Path, cache: Path) -> Path:
    return cache / (hashlib.sha256(str(shard.resolve()).encode()).hexdigest()[:24] + ".npz")


def load_shard_index(shard: Path, cache: Path | None) -> dict[str, np.ndarray]:
    """The shard's index from the cache when it was made from this very file (size and mtime), else scanned
    and cached. A cache that cannot be read or written costs a scan, never the run."""
    if cache is None:
        return scan_shard(shard)
    path, stamp = _cache_file(shard, cache), _stamp(shard)
    try:
        with np.load(path, allow_pickle=False) as z:
            if np.array_equal(z["stamp"], stamp):
                return {k: z[k] for k in ("keys", *MEMBERS)}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass   # absent, stale format or damaged: scan again
    index = scan_shard(shard)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, stamp=stamp, **index)
        os.replace(tmp, path)   # atomic: a reader sees the old file or the whole new one
    except OSError as e:
        warnings.warn(f"shard index cache {cache} is not writable ({e}); shards are scanned at every start")
    return index


class ShardIndex:
    """Byte offsets of every sample's mp4 and json, in flat numpy arrays rather than one Python object per
    sample: 70 bytes a clip with ivkit's keys (0.7 GB for 10M clips) against 530 for a key string and a dict per
    clip (5.3 GB), and forked loader workers share its pages instead of copying them as reference counts change.
    Each shard's part comes from one pass over its tar headers (86 us per clip on a 2-core host, 14 min for 10M
    clips), cached per shard (`index_cache_dir`), so a restart or an eval reads it back 100x faster
    (bench/shard_index.py)."""

    def __init__(self, shards: list[Path], cache: Path | None = None):
        self.shards = [Path(s) for s in shards]
        parts = [load_shard_index(s, cache) for s in self.shards]
        self.shard_of = np.concatenate([np.full(len(p["keys"]), i, np.int32) for i, p in enumerate(parts)])
        self.keys = np.concatenate([p["keys"] for p in parts])
        self.offsets = {ext: np.concatenate([p[ext] for p in parts]) for ext in MEMBERS}
        if not len(self.keys):
            raise ValueError(f"no samples with an mp4 member in {len(self.shards)} shard(s)")

    @staticmethod
    def warm(shards: list[Path], cache: Path | None) -> None:
        """Scan and cache these shards (one rank's share, so that the ranks of a job scan the corpus once)."""
        if cache is not None:
            for s in shards:
                load_shard_index(Path(s), cache)

    @classmethod
    def open(cls, spec: str | Path | list, cache_setting: str = "") -> "ShardIndex":
        """The index of a shard source (resolve_shards), cached as `data.index_cache` says; refused if a shard
        holds another number of samples than the wids index listing it says (check_against_wids)."""
        index = cls(resolve_shards(spec), index_cache_dir(cache_setting))
        check_against_wids(spec, index)
        return index

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, i: int) -> str:
        return self.keys[i].decode()

    def read(self, i: int, ext: str) -> bytes | None:
        offset, size = self.offsets[ext][i]
        if offset < 0:
            return None
        with open(self.shards[self.shard_of[i]], "rb") as f:
            f.seek(int(offset))
            return f.read(int(size))

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
            keys.append(self.index.key(sid))
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
    index = index or ShardIndex.open(cfg.shards, cfg.index_cache)
    stream = ClipStream(index, cfg, seed, rank, world, start, epochs, keep_last)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, collate_fn=_keep_lists,
                        prefetch_factor=2 if cfg.num_workers > 0 else None, pin_memory=pin_memory,
                        persistent_workers=False, worker_init_fn=_outlive_first_sigterm,
                        # its own generator: starting an iterator must not draw from the global RNG,
                        # or a resumed run's masks would drift from the uninterrupted run's
                        generator=torch.Generator().manual_seed(seed))
    return loader, stream
