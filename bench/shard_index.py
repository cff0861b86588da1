"""The loader's shard index: a cold scan and a cached read, against a bare tarfile pass over the same shards.

Every rank builds the index of every shard before its first batch (ivtrain.data.index.ShardIndex). Its
costs at corpus scale are the start-up time and the memory each process (and each forked loader worker)
holds. The shards here are real tars in the ivkit layout (`<key>.mp4` + `<key>.json` per sample, keys
shaped like ivkit clip ids, `<video id>_<start ms>_<end ms>`); the member bytes are filler, since only the
headers are read.

1. baseline: `tarfile.open(...).getmembers()` over every shard: the bare header pass any tar index needs.
2. cold: ShardIndex with an empty cache: the scan plus writing one .npz per shard.
3. cached: ShardIndex again: the .npz files read back, no tar opened.
Memory: bytes per sample of the index arrays, against a per-sample Python object layout (a key string and a
dict of (offset, size) tuples per sample, as the loader held before the arrays), measured with tracemalloc.

Usage: python bench/shard_index.py [--shards 20] [--per-shard 1000] [--out F]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ivtrain.data.index import ShardIndex, scan_shard  # noqa: E402


def write_shards(folder: Path, shards: int, per_shard: int) -> list[Path]:
    paths = []
    mp4, meta = b"\0" * 4000, json.dumps({"label": "left", "duration": 4.0}).encode()
    for s in range(shards):
        path = folder / f"shard-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s * per_shard + i:016x}_{i * 4000:08d}_{i * 4000 + 4000:08d}"
                for ext, data in (("mp4", mp4), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def object_layout_bytes(paths: list[Path]) -> int:
    """Traced bytes of one (key, {ext: (offset, size)}) Python object per sample."""
    parts = [scan_shard(p) for p in paths]
    tracemalloc.start()
    objects = [(k.decode(), {"mp4": (int(m[0]), int(m[1])), "json": (int(j[0]), int(j[1]))})
               for part in parts for k, m, j in zip(part["keys"], part["mp4"], part["json"])]
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del objects
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(Path(tmp), args.shards, args.per_shard)
        n = args.shards * args.per_shard
        for p in paths:   # page cache warm for every run below, so the passes differ only in the work they do
            p.read_bytes()
        _, tar_s = timed(lambda: [tarfile.open(p).getmembers() for p in paths])
        cache = Path(tmp) / "cache"
        cold, cold_s = timed(lambda: ShardIndex(paths, cache))
        warm, warm_s = timed(lambda: ShardIndex(paths, cache))
        assert warm.keys.tolist() == cold.keys.tolist() and len(warm) == n
        index_bytes = warm.keys.nbytes + warm.shard_of.nbytes + sum(a.nbytes for a in warm.offsets.values())
        objects = object_layout_bytes(paths)
    result = {
        "samples": n, "shards": args.shards,
        "tarfile_pass_s": round(tar_s, 3), "cold_s": round(cold_s, 3), "cached_s": round(warm_s, 3),
        "cold_us_per_sample": round(cold_s / n * 1e6, 1), "cached_us_per_sample": round(warm_s / n * 1e6, 2),
        "cold_vs_tarfile": round(cold_s / tar_s, 2), "cached_vs_tarfile": round(warm_s / tar_s, 3),
        "index_bytes_per_sample": round(index_bytes / n, 1), "object_bytes_per_sample": round(objects / n, 1),
        "extrapolated_10M_clips": {"cold_min": round(cold_s / n * 1e7 / 60, 1),
                                   "cached_s": round(warm_s / n * 1e7, 1),
                                   "index_gb": round(index_bytes / n * 1e7 / 1e9, 2),
                                   "objects_gb": round(objects / n * 1e7 / 1e9, 2)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
