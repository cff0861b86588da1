"""Stage-3 throughput: LLM tokens per second and the training step's time split into vision tower, QFormer (with
the LayerNorm and projection) and LLM, each forward + backward, on synthetic batches of the real shapes.

The split runs the three parts one after the other, each from a leaf input that takes the next part's gradient
(LLM first, then the bridge, then the tower), so each part's time is its own; the whole step (one forward and
backward of the model, AdamW over the trained parameters) is timed in the same run, and the sum of the parts over
the whole step is reported beside it as the in-run check. Configurations, all measured in one process: the tiny
recipe's model (the baseline), the same with the tower frozen, the same in HD mode (4 tiles + the global view).

On a GPU (`--device cuda --size 7b`): a Mistral-7B-shaped LLM (random weights, bf16, LoRA r 16 on every projection
and lm_head, gradient checkpointing), InternVideo2-1B, BERT-base QFormer, 8 frames of 224 px, text 512: MFU against
the device's bf16 peak and peak memory.

Usage: python bench/stage3_throughput.py [--steps N] [--batch B] [--device cpu|cuda] [--size tiny|7b] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    # vision (ViT preset, frames, px), QFormer (width, layers, heads), LLM (width, layers, heads, kv heads, mlp),
    # queries + extra queries, text tokens, LoRA rank
    "tiny": dict(vit="tiny", frames=4, px=32, qformer=(64, 2, 4), llm=(64, 2, 4, 2, 128, 384), queries=(8, 8),
                 text=64, rank=8),
    "small": dict(vit="tiny", frames=8, px=64, qformer=(256, 4, 4), llm=(512, 4, 8, 4, 1408, 8000),
                  queries=(32, 32), text=256, rank=16),
    "7b": dict(vit="1b", frames=8, px=224, qformer=(768, 12, 12), llm=(4096, 32, 32, 8, 14336, 32000),
               queries=(32, 64), text=512, rank=16),
}


def build(size: str, device: torch.device, dtype: torch.dtype, frozen_vision: bool = False):
    from transformers import BertConfig, LlamaConfig, LlamaForCausalLM

    from ivtrain.models.llm import LoraSettings, add_lora
    from ivtrain.models.qformer import QFormer, QFormerConfig
    from ivtrain.models.videochat import VideoChat
    from ivtrain.models.vit import InternVideo2, ViTConfig

    s = SIZES[size]
    torch.manual_seed(0)
    with torch.device(device):
        encoder = InternVideo2(ViTConfig(size=s["vit"], num_frames=s["frames"], img_size=s["px"],
                                         checkpoint_activations=size != "tiny"), device=device)
        width, layers, heads = s["qformer"]
        qformer = QFormer(BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=4 * width), encoder.cfg.embed_dim, QFormerConfig())
        hidden, depth, h, kv, mlp, vocab = s["llm"]
        lm = LlamaForCausalLM(LlamaConfig(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=h,
                                          num_key_value_heads=kv, intermediate_size=mlp, vocab_size=vocab,
                                          max_position_embeddings=4096)).to(dtype)
        lm.requires_grad_(False)
        if size != "tiny":
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm = add_lora(lm, LoraSettings(r=s["rank"], alpha=2 * s["rank"]))
        model = VideoChat(encoder, qformer, lm, *s["queries"]).to(device)
    if frozen_vision:
        model.vision_encoder.requires_grad_(False)
        model.vision_layernorm.requires_grad_(False)
    return model.to(dtype).train()


def batch_of(model, size: str, b: int, device: torch.device, hd_views: int = 1) -> dict:
    """b samples of `hd_views` views each, text of the recipe's length with its last 16 tokens as the answer."""
    s = SIZES[size]
    g = torch.Generator().manual_seed(0)
    views = torch.randn(b * hd_views, 3, s["frames"], s["px"], s["px"], generator=g).to(device)
    vocab = model.lm.config.vocab_size
    ids = torch.randint(0, vocab, (b, s["text"]), generator=g).to(device)
    labels = torch.full_like(ids, -100)
    labels[:, -16:] = ids[:, -16:]
    q = torch.randint(0, 100, (b, 32), generator=g).to(device)
    return {"views": views, "view_frames": torch.full((b * hd_views,), s["frames"], device=device),
            "views_per_sample": [hd_views] * b, "qformer_ids": q, "qformer_mask": torch.ones_like(q, dtype=torch.bool),
            "input_ids": ids, "labels": labels, "vision_at": [4] * b, "text_len": [s["text"]] * b}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def split_step(model, batch: dict, device) -> dict[str, float]:
    """Seconds of forward + backward of the LLM, the bridge and the tower, each on its own."""
    out = {}
    t0 = time.perf_counter()
    tokens, mask = model.vision_features(batch["views"], batch["view_frames"])
    sync(device)
    t1 = time.perf_counter()
    leaf_tokens = tokens.detach().requires_grad_(True)
    vision = model.view_tokens(leaf_tokens, mask, batch["views_per_sample"], batch["qformer_ids"],
                               batch["qformer_mask"])
    sync(device)
    t2 = time.perf_counter()
    leaves = [v.detach().requires_grad_(True) for v in vision]
    embeds, attention, labels = model.assemble(leaves, batch["input_ids"], batch["labels"], batch["vision_at"],
                                               batch["text_len"])
    logits = model.lm(inputs_embeds=embeds, attention_mask=attention, use_cache=False).logits
    answer = labels[:, 1:] != -100
    loss = torch.nn.functional.cross_entropy(logits[:, :-1][answer].float(), labels[:, 1:][answer])
    loss.backward()
    sync(device)
    t3 = time.perf_counter()
    torch.autograd.backward(vision, [leaf.grad for leaf in leaves])
    sync(device)
    t4 = time.perf_counter()
    if tokens.requires_grad:
        tokens.backward(leaf_tokens.grad)
    sync(device)
    t5 = time.perf_counter()
    out["llm_s"] = t3 - t2
    out["qformer_s"] = (t2 - t1) + (t4 - t3)
    out["vision_s"] = (t1 - t0) + (t5 - t4)
    return out


def measure(model, batch: dict, device, steps: int) -> dict:
    from ivtrain.objectives.iv2_stage3 import stage3_flops

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    sums = {"llm_s": 0.0, "qformer_s": 0.0, "vision_s": 0.0, "step_s": 0.0}
    for i in range(steps + 1):                      # the first round warms up and is not counted
        parts = split_step(model, batch, device)
        opt.zero_grad(set_to_none=True)
        sync(device)
        t0 = time.perf_counter()
        loss, _ = model(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i:
            parts["step_s"] = time.perf_counter() - t0
            for k in sums:
                sums[k] += parts[k] / steps
    queries = model.queries().shape[1]
    lengths = [t + v * queries for t, v in zip(batch["text_len"], batch["views_per_sample"])]
    flops = sum(stage3_flops(model, batch["view_frames"].tolist(), batch["qformer_ids"].shape[1], lengths).values())
    out = {**{k: round(v, 4) for k, v in sums.items()}, "llm_tokens": sum(lengths),
           "tokens_per_s": round(sum(lengths) / sums["step_s"], 1),
           "parts_over_step": round((sums["llm_s"] + sums["qformer_s"] + sums["vision_s"]) / sums["step_s"], 3),
           "tflops_per_s": round(flops / sums["step_s"] / 1e12, 4)}
    if device.type == "cuda":
        from ivtrain.engine.metrics import peak_flops

        peak = peak_flops(0.0, device)
        out["mfu"] = round(flops / sums["step_s"] / peak, 4) if peak else None
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.set_num_threads(1)
    results = {}
    for name, frozen, views in [("baseline", False, 1), ("vision_frozen", True, 1), ("hd_4_tiles", False, 5)]:
        model = build(args.size, device, dtype, frozen)
        batch = batch_of(model, args.size, args.batch, device, views)
        if dtype != torch.float32:
            batch["views"] = batch["views"].to(dtype)
        results[name] = measure(model, batch, device, args.steps)
        print(name, json.dumps(results[name]), flush=True)
        del model
    base = results["baseline"]["step_s"]
    for name, r in results.items():
        r["step_vs_baseline"] = round(r["step_s"] / base, 3)
    summary = {"size": args.size, "device": args.device, "batch": args.batch, "steps": args.steps,
               "threads": torch.get_num_threads(), "results": results}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
