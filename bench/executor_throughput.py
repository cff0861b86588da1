"""Items/s of ingest and probe inline, on the local process pool and on Ray, with a projection to 10M items.

Ingest: a CSV list of N rows (path, caption, start, end) naming N small distinct files, so each item hashes a
file and the writer records a video, a span and a caption per row. Probe: M copies of a short real video. Each
executor runs on a fresh corpus; inline is the baseline the ratios are taken against. Ray is the instance the
executor starts for this process alone (as many CPUs as the host has: the same cores as the pool), with as many
actors as the pool has processes, so its ratio measures the executor's overhead, not more hardware.

    python bench/executor_throughput.py [--rows 100000] [--videos 200] [--workers 2] [--skip-ray]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IVKIT_PROGRESS", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
from ivdata import pipeline  # noqa: E402
from ivdata.media.synth import make_video  # noqa: E402
from ivdata.runtime.executor import Executor  # noqa: E402

PROJECT = 10_000_000


def make_inputs(root: Path, rows: int, videos: int) -> tuple[Path, Path]:
    files = root / "files"
    files.mkdir(parents=True)
    listing = root / "list.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption", "start", "end"])
        for i in range(rows):
            p = files / f"{i:07d}.mp4"
            p.write_bytes(i.to_bytes(8, "little") * 32)        # 256 distinct bytes: hashing is the item's work
            w.writerow([str(p), f"a caption of row {i}", 0, 2])
    vids = root / "videos"
    make_video(vids / "v0000.mp4", seconds=2.0, audio=None, seed=0)
    for i in range(1, videos):
        shutil.copy(vids / "v0000.mp4", vids / f"v{i:04d}.mp4")
    return listing, vids


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--results", default="bench/RESULTS.md")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ivbench-exec-"))
    try:
        listing, vids = make_inputs(root, args.rows, args.videos)
        executors = {"inline": Executor("local", 0), f"pool -j {args.workers}": Executor("local", args.workers)}
        if not args.skip_ray:
            executors[f"ray ({args.workers} actors, local instance)"] = Executor("ray", args.workers)
        table = []
        for name, ex in executors.items():
            c = pipeline.open_or_init(f"c{len(table)}", root / "home")
            s_ing, st_ing = timed(lambda: pipeline.ingest(c, [str(listing)], workers=ex))
            c2 = pipeline.open_or_init(f"p{len(table)}", root / "home")
            pipeline.ingest(c2, [str(vids)])
            s_probe, st_probe = timed(lambda: pipeline.probe(c2, workers=ex))
            assert st_ing.ok == args.rows and st_probe.ok == args.videos, (st_ing, st_probe)
            table.append((name, args.rows / s_ing, args.videos / s_probe))
            print(f"{name}: ingest {args.rows / s_ing:.0f} rows/s, probe {args.videos / s_probe:.1f} videos/s",
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base_ing, base_probe = table[0][1], table[0][2]
    lines = [f"\n## Executors: ingest and probe items/s inline, on the pool and on Ray "
             f"({time.strftime('%Y-%m-%d %H:%M')})\n",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'CPU only'}), "
             f"shared with other sessions. `python bench/executor_throughput.py --rows {args.rows} "
             f"--videos {args.videos} --workers {args.workers}`: ingest of a {args.rows}-row CSV list (each row "
             f"a distinct 256-byte file, a span and a caption), probe of {args.videos} copies of a 2 s video.\n",
             "| executor | ingest rows/s | vs inline | 10M rows (h) | probe videos/s | vs inline | 10M videos (h) |",
             "|---|---|---|---|---|---|---|"]
    for name, ing, probe in table:
        lines.append(f"| {name} | {ing:.0f} | {ing / base_ing:.2f} | {PROJECT / ing / 3600:.1f} | {probe:.1f} | "
                     f"{probe / base_probe:.2f} | {PROJECT / probe / 3600:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
