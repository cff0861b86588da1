"""The mixture loader's cost over decoding the same samples (one process, then per worker).

Three shard sets as the trainer's tests use them (bench/mixture_sets.py: captioned clips with FLAC audio and
without, built by the data engine; images mixed with clips), read through a weighted mixture with the sample spec of
an objective that takes video + images, fbank audio and tokenized captions. In one run, over the same samples:
1. raw decode: each sample's members read from its tar by offset and decoded (the sampled frames with decord, the
   audio with PyAV, the image with PIL), nothing else;
2. the same work inline: read_sample (decode, crop, resize, fbank, tokenize) and collate, without the loader;
3. the loader in this process (MixtureStream: scheduling, per-sample seeds, skip accounting, collate);
4. the DataLoader with 1 and 2 workers.
The ratios raw / loader and inline / loader are what the loader adds per worker.

    python bench/mixture_loader.py [--per-source 48] [--repeats 3] [--record]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def build(work: Path, per_source: int) -> dict:
    import train_synthetic
    from mixture_sets import WORDS, build_captioned, write_mixed_shards, write_tokenizer

    from ivdata.media.synth import make_video

    tone = [make_video(work / "tone" / f"t{i}.mp4", seconds=2.5, audio="tone", size=(96, 72), seed=i)
            for i in range(per_source)]
    rows = train_synthetic.write_motion_dataset(work / "motion", per_class=max(1, per_source // 4))
    motion = [Path(line.split(",")[0]) for line in rows.read_text().splitlines()[1:]]
    return {"sources": {"av": build_captioned("av", tone, work / "home", "web", 1),
                        "motion": build_captioned("motion", motion, work / "home", "V", 2),
                        "mixed": write_mixed_shards(work / "mixed", motion, 3, count=per_source)},
            "tokenizer": write_tokenizer(work / "tokenizer", WORDS)}


def spec_of(tokenizer: Path):
    from ivtrain.data.spec import AudioSpec, CaptionSpec, SampleSpec, VideoSpec

    return SampleSpec(video=VideoSpec(frames=8, size=64), images=True,
                      audio=AudioSpec(seconds=2.0, features="fbank", num_mel_bins=64, required=False),
                      captions=(("caption", CaptionSpec(("web", "V"), str(tokenizer), 16)),))


def raw_decode(sources, order) -> float:
    """Seconds to read and decode every (source, sample id) in `order`: frames, audio, image; no transforms."""
    import io

    import numpy as np
    from PIL import Image

    from ivtrain.data.audio import decode_audio
    from ivtrain.data.sampling import decode_clip

    t = time.perf_counter()
    for name, sid in order:
        index = sources[name].index
        media = index.media(sid)
        if media == "mp4":
            decode_clip(index.read(sid, "mp4"), 8, np.random.default_rng([0, 0, sid]))
        else:
            np.asarray(Image.open(io.BytesIO(index.read(sid, media))).convert("RGB"))
        if index.has(sid, "flac"):
            decode_audio(index.read(sid, "flac"), 16000)
        index.metadata(sid)
    return time.perf_counter() - t


def inline(sources, order, data, spec, batch: int) -> float:
    from ivtrain.data.collate import collate
    from ivtrain.data.samples import read_sample

    t = time.perf_counter()
    samples = [read_sample(sources[name].index, sid, 0, spec, data, 0) for name, sid in order]
    for i in range(0, len(samples), batch):
        collate(samples[i:i + batch], spec)
    return time.perf_counter() - t


def run(per_source: int, repeats: int) -> dict:
    import torch

    from ivtrain.config import DataConfig
    from ivtrain.data.index import ShardIndex
    from ivtrain.data.loader import MixtureStream, Source, make_loader

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        made = build(Path(tmp), per_source)
        spec = spec_of(made["tokenizer"])
        sources = {n: Source(n, ShardIndex.open(p, "off"), w) for (n, p), w in
                   zip(made["sources"].items(), (2.0, 1.0, 1.0))}
        data = DataConfig(shards="-", image_size=64, num_frames=8, batch_size=8, num_workers=0)
        stream = MixtureStream(list(sources.values()), data, spec)
        batches = min(len(s.index) for s in sources.values()) * 3 // data.batch_size
        # the samples the loader will deliver, in its order: the raw and inline passes decode the same ones
        order = []
        for n, (i, epoch, offset, b, _) in enumerate(stream.schedule()):
            if n == batches:
                break
            src = stream.sources[i]
            ids = stream._stream(src, 0).epoch_order(epoch, offset)[b * data.batch_size:(b + 1) * data.batch_size]
            order += [(src.name, int(sid)) for sid in ids]
        result = {"samples": len(order), "batches": batches, "sources": {n: len(s.index) for n, s in sources.items()}}
        timings: dict[str, list[float]] = {"raw": [], "inline": [], "loader0": [], "workers1": [], "workers2": []}
        cpu: dict[str, list[float]] = {"raw": [], "inline": [], "loader0": []}
        for _ in range(repeats):
            c = time.process_time()
            timings["raw"].append(raw_decode(sources, order))
            cpu["raw"].append(time.process_time() - c)
            c = time.process_time()
            timings["inline"].append(inline(sources, order, data, spec, data.batch_size))
            cpu["inline"].append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            delivered = sum(b["size"] for _, b in zip(range(batches), iter(stream)))
            timings["loader0"].append(time.perf_counter() - t)
            cpu["loader0"].append(time.process_time() - c)
            assert delivered == len(order), (delivered, len(order))
            for workers in (1, 2):
                loader = iter(make_loader(stream, workers))
                first = next(loader)               # worker start-up is not throughput
                t = time.perf_counter()
                n = sum(b["size"] for _, b in zip(range(batches - 1), loader))
                timings[f"workers{workers}"].append((time.perf_counter() - t) * (len(order) / max(1, n)))
                del first, loader
        med = {k: statistics.median(v) for k, v in timings.items()}
        result.update({f"{k}_samples_per_s": len(order) / v for k, v in med.items()})
        result["loader_over_raw_decode"] = med["loader0"] / med["raw"]
        result["loader_over_inline_work"] = med["loader0"] / med["inline"]
        result["per_worker_over_raw_decode"] = med["workers1"] / med["raw"]
        # CPU seconds of this process (decord and PyAV decode on the calling thread here): on a machine other jobs
        # share, wall time also counts their time slices, CPU time only the work each pass does
        fastest = {k: min(v) for k, v in cpu.items()}
        result["cpu_inline_over_raw_decode"] = fastest["inline"] / fastest["raw"]
        result["cpu_loader_over_raw_decode"] = fastest["loader0"] / fastest["raw"]
        result["load_average"] = list(os.getloadavg())
        return result


def record(result: dict) -> None:
    lines = [
        "", "## Mixture loader cost (bench/mixture_loader.py)", "",
        f"Machine: {platform.processor() or platform.machine()}, 2 cores, CPU only; torch threads 1; other jobs "
        "may share the cores (ratios are from one run, medians of repeats).", "",
        f"{result['samples']} samples in {result['batches']} batches of 8 from three sources {result['sources']} "
        "(weights 2:1:1): captioned clips with FLAC (fbank 64 bins), captioned clips without, images mixed with "
        "clips; 8 frames at 64 px, captions tokenized to 16.", "",
        "| pass | samples/s | time / raw decode |", "|---|---|---|",
        f"| raw decode (frames, audio, image; no transforms) | {result['raw_samples_per_s']:.1f} | 1.00 |",
        f"| the loader's work inline (decode, crop, resize, fbank, tokenize, collate) | "
        f"{result['inline_samples_per_s']:.1f} | {result['raw_samples_per_s'] / result['inline_samples_per_s']:.2f} |",
        f"| mixture loader, in process | {result['loader0_samples_per_s']:.1f} | "
        f"{result['loader_over_raw_decode']:.2f} |",
        f"| DataLoader, 1 worker | {result['workers1_samples_per_s']:.1f} | "
        f"{result['per_worker_over_raw_decode']:.2f} |",
        f"| DataLoader, 2 workers | {result['workers2_samples_per_s']:.1f} | "
        f"{result['raw_samples_per_s'] / result['workers2_samples_per_s']:.2f} |", "",
        f"The loader itself (scheduling, seeds, skip accounting) over the same work done inline: "
        f"{result['loader_over_inline_work']:.2f}x.", "",
        f"In CPU seconds of the process (the least of the repeats; what each pass costs whatever else runs): the "
        f"loader's work inline {result['cpu_inline_over_raw_decode']:.2f}x raw decode, the mixture loader in process "
        f"{result['cpu_loader_over_raw_decode']:.2f}x. Load average during the run: "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])}.", ""]
    with open(ROOT / "bench" / "RESULTS.md", "a") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-source", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    result = run(args.per_source, args.repeats)
    print(json.dumps(result, indent=2))
    if args.record:
        record(result)


if __name__ == "__main__":
    main()
