"""Where a stage-2 training step spends its time: vision, text, audio and the losses, with samples/s and tokens/s.

One batch of real clips (the data engine's captioned clips with FLAC audio and AVS captions, bench/mixture_sets.py)
goes through the stage-2 objective built from a recipe (iv2_stage2_tiny's towers, or ViT-B/14 at 224 px with a
BERT-base-sized text tower and the released BEATs configuration, all randomly initialized: only shapes matter),
with every loss on (VTC, VTM, MLM and the audio-visual three). Each part is timed forward and backward on its own:
  vision  the encoder over the visible tokens + vision_proj       text   the text-only layers of each caption
  audio   the frozen BEATs (forward only) + the audio projections   losses  contrastive, matching (fusion encoder
          on 3 x batch pairs) and masked LM (fusion encoder), from the encoded parts
and the whole step (forward, backward, AdamW) is timed as the trainer runs it, so the parts can be checked to add up.
On CUDA it also reports MFU (FLOPs of the batch, ivtrain's count, per second over the device's bf16 peak) and peak
memory. Usage: python bench/stage2_step_time.py [--sizes tiny b] [--batch 4] [--steps 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

SIZES = {"tiny": dict(vit="tiny", image=32, bert=dict(hidden=48, layers=4, heads=4), fusion=2, beats={}),
         "b": dict(vit="b", image=224, bert=dict(hidden=768, layers=12, heads=12, vocab_size=30522), fusion=9,
                   beats=dict(input_patch_size=16, embed_dim=512, encoder_layers=12, encoder_embed_dim=768,
                              encoder_ffn_embed_dim=3072, encoder_attention_heads=12, conv_pos=128,
                              conv_pos_groups=16, num_buckets=320, max_distance=800))}


def data(work: Path) -> Path:
    from ivdata.media.synth import make_video
    from mixture_sets import build_captioned

    if (work / "shards.txt").exists():
        return Path((work / "shards.txt").read_text())
    videos = [make_video(work / "tone" / f"t{i}.mp4", seconds=3.0, audio="tone", size=(320, 240), seed=i)
              for i in range(8)]
    index = build_captioned("stage2_bench", videos, work / "home", "AVS", 0)
    (work / "shards.txt").write_text(str(index))
    return index


def objective_for(size: str, work: Path, shards: Path, batch: int, device: torch.device):
    from stage2_fixtures import stage2_recipe

    from ivtrain.config import build_recipe
    from ivtrain.models.audio import save_tiny_beats
    from ivtrain.objectives.iv2_stage2 import IV2Stage2
    from ivtrain.tiny_teachers import save_tiny_bert

    spec = SIZES[size]
    assets = work / f"assets_{size}"
    if not (assets / "tiny_bert").exists():
        save_tiny_bert(assets / "tiny_bert", **spec["bert"])
        save_tiny_beats(assets / "tiny_beats", **spec["beats"])
    raw = stage2_recipe(assets, "", shards, audio=True, captions={"default": ["AVS"]})
    raw["iv2_stage2"].update(vision={"init": "", "model": {"size": spec["vit"], "image_pos_embed": True}},
                             text={"path": str(assets / "tiny_bert"), "fusion_layer": spec["fusion"],
                                   "max_length": 32}, embed_dim=512 if size != "tiny" else 32,
                             av_concat_dim=768 if size != "tiny" else 48)
    raw["data"].update(image_size=spec["image"], batch_size=batch, num_workers=0)
    raw["iv2_stage2"]["audio"]["seconds"] = 3.0
    torch.manual_seed(0)
    return IV2Stage2(build_recipe(raw), device)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def backward(outputs, device) -> float:
    tensors = [o for o in outputs if torch.is_tensor(o) and o.requires_grad]
    return timed(lambda: torch.autograd.backward(tensors, [torch.randn_like(o) for o in tensors]), device)[1]


def leaf(x):
    return x.detach().requires_grad_(x.is_floating_point())


def parts(model, inputs: dict, device) -> dict[str, float]:
    """Seconds of each part, forward + backward."""
    (tokens, mask, pooled), fv = timed(lambda: model.encode_vision(inputs["video"], inputs["frames"], inputs["visible"],
                                                                   inputs["vision_length"]), device)
    v_proj, fp = timed(lambda: model.vision_proj(pooled), device)
    vision = fv + fp + backward([tokens, v_proj], device)
    encoded, ft = timed(lambda: {n: model.encode_text(i, m) for n, (i, m) in inputs["text"].items()}, device)
    text = ft + backward([t for pair in encoded.values() for t in pair], device)
    audio_tokens, fa = timed(lambda: model.encode_audio_tokens(inputs["audio"]), device)
    v_tokens, v_mask, v_p = leaf(tokens), mask, leaf(v_proj)
    (av, av_tokens, av_mask), fav = timed(lambda: model.audio_visual(audio_tokens, v_p, v_tokens, v_mask), device)
    audio = fa + fav + backward([av, av_tokens], device)
    media = {"v": (leaf(v_proj), leaf(tokens), mask), "av": (leaf(av), leaf(av_tokens), av_mask)}
    enc = {n: (leaf(h), leaf(p)) for n, (h, p) in encoded.items()}
    (loss, _), fl = timed(lambda: model.losses(media, enc, inputs["text"], inputs["mlm"], inputs["positives"],
                                               inputs["valid"], inputs["valid_all"], inputs["seeds"],
                                               inputs["seeds_all"], inputs["losses"]), device)
    losses = fl + backward([loss], device)
    model.zero_grad(set_to_none=True)
    return {"vision": vision, "text": text, "audio": audio, "losses": losses}


def measure(size: str, work: Path, shards: Path, batch: int, steps: int, device: torch.device) -> dict:
    from ivtrain.data.index import ShardIndex
    from ivtrain.data.loader import MixtureStream, Source
    from ivtrain.engine.metrics import peak_flops

    objective = objective_for(size, work, shards, batch, device)
    model = objective.trainable.to(device).train()
    spec = objective.sample_spec()
    stream = MixtureStream([Source("default", ShardIndex.open(shards, "off"))], objective.recipe.data, spec,
                           collate_fn=objective.collate)
    batch_data = next(b for b in stream if b["size"] == batch)
    inputs = objective.prepare(batch_data)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows, totals = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(steps + 1):
        split = parts(model, inputs, device)

        def whole():
            loss, _ = model(**inputs)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _, total = timed(whole, device)
        if step:    # the first round warms up (allocations, oneDNN kernels)
            rows.append(split)
            totals.append(total)
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    total = statistics.median(totals)
    flops = sum(objective.flops(batch_data).values())
    peak = peak_flops(0.0, device)
    return {"size": size, "batch": batch, "device": str(device), "step_s": total,
            "parts_s": median, "parts_share": {k: v / sum(median.values()) for k, v in median.items()},
            "parts_sum_over_step": sum(median.values()) / total,
            "samples_per_s": batch / total, "tokens_per_s": objective.count(batch_data) / total,
            "tflops_per_s": flops / total / 1e12, "mfu": flops / total / peak if peak else None,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "b"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=str(ROOT / "bench" / "out" / "stage2_step_time"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    shards = data(work)
    results = [measure(s, work, shards, args.batch, args.steps, torch.device(args.device)) for s in args.sizes]
    print(json.dumps(results, indent=2))
    (work / "result.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
