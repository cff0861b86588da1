"""Where every sample's members sit in its tar: a flat, cached index over a shard set.

The shard format (docs/ARCHITECTURE.md) is the whole contract between the data engine and the trainer: tars whose
samples are a media member (`K.mp4`, or an image `K.jpg` / `K.png` / `K.webp`) with `K.json`, optionally `K.flac`
and `K.conversations.json`, listed by a `.wids.json` index or a `.txt` shard list.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

# the members the loader can read; a sample needs one media member (video or image) to be a sample at all
VIDEO = ("mp4",)
IMAGES = ("jpg", "jpeg", "png", "webp")
MEDIA = VIDEO + IMAGES
MEMBERS = MEDIA + ("json", "flac", "conversations.json")
INDEX_VERSION = 2


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
    samples than the index promises. File sizes are checked with a stat (resolve_shards); sample counts against
    an index's per-shard scan (ShardIndex.open, and the trainer), which counts samples with a media member, as
    the loader does. Shards given by a .txt list, a directory or a .tar have no index to be checked against."""
    if isinstance(spec, (list, tuple)) or "," in str(spec):
        for part in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")):
            check_against_wids(part, index)
        return
    path = Path(spec)
    if not path.name.endswith(".json"):
        return
    samples = {}
    if index is not None:
        for i, n in enumerate(np.bincount(index.shard_of, minlength=len(index.shards))):
            samples[index.shards[i]] = int(n)
    for e in json.loads(path.read_text())["shardlist"]:
        shard = Path(e["url"]) if Path(e["url"]).is_absolute() else path.parent / e["url"]
        size = shard.stat().st_size
        if "filesize" in e and size != e["filesize"]:
            raise ValueError(f"shard {shard} has {size} bytes, its index {path} says {e['filesize']}: the file is "
                             "cut short or replaced; copy it again (or rebuild the index)")
        if shard in samples and "nsamples" in e and samples[shard] != e["nsamples"]:
            raise ValueError(f"shard {shard} holds {samples[shard]} samples (with a video or image member), its "
                             f"index {path} says {e['nsamples']}: the file is cut short or replaced; copy it again "
                             "(or rebuild the index)")


def index_cache_dir(setting: str) -> Path | None:
    """Where per-shard indexes are kept: `data.index_cache` ("" -> $XDG_CACHE_HOME/ivkit/shard_index, "off" -> none)."""
    if setting == "off":
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ivkit" / "shard_index"


def _member(name: str) -> tuple[str, str] | None:
    """(key, member type) of a tar member name, or None for names the loader does not read. The key ends at the
    first dot, as webdataset reads it."""
    name = name.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    key, ext = name.split(".", 1)
    ext = ext.lower()
    return (key, ext) if ext in MEMBERS else None


def scan_shard(shard: Path) -> dict[str, np.ndarray]:
    """One pass over a tar's headers: every sample's key and the (offset, size) of each member type present in the
    shard (-1 where a sample lacks it), in shard order. tarfile reads the headers, so GNU and pax long names work.
    Only member types some sample of the shard has get an array: a video shard pays nothing for image columns."""
    members: dict[str, dict] = {}
    with tarfile.open(shard, "r:") as tar:
        for info in tar:
            if not info.isfile() or (parsed := _member(info.name)) is None:
                continue
            key, ext = parsed
            members.setdefault(key, {})[ext] = (info.offset_data, info.size)
    keys = [k for k, m in members.items() if any(e in m for e in MEDIA)]   # dicts keep first-seen order
    out = {"keys": np.array([k.encode() for k in keys], dtype=bytes) if keys else np.zeros(0, "S1")}
    present = {e for k in keys for e in members[k]}
    for ext in MEMBERS:
        if ext in present:
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
                return {k: z[k] for k in z.files if k != "stamp"}
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
    """Byte offsets of every sample's members, in flat numpy arrays rather than one Python object per sample:
    70 bytes a clip (mp4 + json) with ivkit's keys against ~530 for a key string and a dict per clip, and forked
    loader workers share its pages instead of copying them as reference counts change. Each shard's part comes
    from one pass over its tar headers, cached per shard (`index_cache_dir`), so a restart or an eval reads it
    back 100x faster (bench/shard_index.py)."""

    def __init__(self, shards: list[Path], cache: Path | None = None):
        self.shards = [Path(s) for s in shards]
        parts = [load_shard_index(s, cache) for s in self.shards]
        self.shard_of = np.concatenate([np.full(len(p["keys"]), i, np.int32) for i, p in enumerate(parts)])
        self.keys = np.concatenate([p["keys"] for p in parts])
        present = [e for e in MEMBERS if any(e in p for p in parts)]
        self.offsets = {e: np.concatenate([p[e] if e in p else np.full((len(p["keys"]), 2), -1, np.int64)
                                           for p in parts]) for e in present}
        if not len(self.keys):
            raise ValueError(f"no samples with a video or image member in {len(self.shards)} shard(s)")

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

    def count(self, ext: str) -> int:
        """How many samples carry a member of this type."""
        return int((self.offsets[ext][:, 0] >= 0).sum()) if ext in self.offsets else 0

    def has(self, i: int, ext: str) -> bool:
        return ext in self.offsets and self.offsets[ext][i, 0] >= 0

    def media(self, i: int) -> str:
        """The sample's media member type: mp4, or the image type it carries."""
        return next(e for e in MEDIA if self.has(i, e))

    def read(self, i: int, ext: str) -> bytes | None:
        if not self.has(i, ext):
            return None
        offset, size = self.offsets[ext][i]
        with open(self.shards[self.shard_of[i]], "rb") as f:
            f.seek(int(offset))
            return f.read(int(size))

    def metadata(self, i: int) -> dict:
        raw = self.read(i, "json")
        return json.loads(raw) if raw else {}
