"""VidCap throughput on a CUDA machine with real models: video-hours per GPU-hour per stage.

    python bench/annotate_gpu.py --config recipes/vidcap.yaml --videos /data/sample_videos \
        [--asr-model DIR] [--audio-model DIR] [--frames-model DIR] [--fuse-model DIR|--fuse-url URL] \
        [--device cuda] [--out bench/out/annotate_gpu]

Builds a corpus from --videos (shot split, re-encoded clips), runs asr, audio, frames and fuse in
order on one GPU, and writes bench/out/annotate_gpu/result.json plus the lines for
bench/RESULTS.md. Media seconds per wall second on one GPU is video-hours per GPU-hour.
For the fuse stage through an HTTP server (vLLM), the figure is per client; the server's GPUs count.
Also runs on CPU (--device cpu) for a dry run of the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--videos", type=Path, required=True)
    ap.add_argument("--asr-model")
    ap.add_argument("--audio-model")
    ap.add_argument("--frames-model")
    ap.add_argument("--fuse-model")
    ap.add_argument("--fuse-url")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--stages", default="asr,audio,frames,fuse")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "annotate_gpu")
    args = ap.parse_args()
    os.environ.setdefault("IVKIT_PROGRESS", "0")
    import torch

    from annotate_throughput import decode_baseline, machine, stage_rows
    from ivdata.annotate.config import load_config
    from ivdata.pipeline import build_corpus
    from ivdata.stages.annotate import run_annotation

    over = {"asr.model": args.asr_model, "audio.model": args.audio_model, "frames.model": args.frames_model,
            "fuse.model": args.fuse_model, "device": args.device, "batch_size": args.batch_size}
    if args.fuse_url:
        over.update({"fuse.backend": "openai", "fuse.url": args.fuse_url})
    cfg = load_config(args.config, over)
    if args.out.exists():
        shutil.rmtree(args.out)
    corpus = build_corpus("bench_annotate_gpu", [str(args.videos)], home=args.out, split="shots", cut="reencode",
                          short_side=360, workers=min(8, os.cpu_count() or 1))
    with corpus.manifest(read_only=True) as m:
        clips = m.rows("SELECT clip_id, path, audio_path, duration_s, has_audio FROM clips WHERE status = 'ok'")
    baseline = decode_baseline(clips)
    stats = run_annotation(corpus, cfg, stages=args.stages)
    rows = stage_rows(stats, baseline)
    for r in rows:
        r["video_hours_per_gpu_hour"] = r["media_s_per_s"]      # (media s / wall s) on one GPU
    total_s = sum(st.seconds for st in stats.values())
    media = sum(c["duration_s"] for c in clips)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device.startswith("cuda") else "none"
    result = {"machine": machine(), "gpu": gpu, "clips": len(clips), "media_s": round(media, 1),
              "all_stages_video_hours_per_gpu_hour": round(media / total_s, 3) if total_s else None,
              "models": {s: getattr(cfg, s).model_name for s in ("asr", "audio", "frames", "fuse")},
              "baseline": baseline, "stages": rows}
    (args.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))
    print(f"\n| stage | model | clips/s | video-h per GPU-h | RTF |  ({gpu})")
    for r in rows:
        print(f"| {r['stage']} | {result['models'][r['stage']]} | {r['clips_per_s']} | "
              f"{r['video_hours_per_gpu_hour']} | {r['real_time_factor']} |")


if __name__ == "__main__":
    main()
