"""InternVideo-Next stage 1, B recipe (recipes/next_stage1_b.yaml: ViT-B/14, 16 frames at 224 px, mask 0.8, the last
5 layers of a ModernBERT-large, decoder 6 x 1536, a SigLIP2-1B-sized teacher at 256 px) at batch 2 on the CPU:
where a training step's time goes (teacher, encoder + alignment heads, predictor, decoder, optimizer) and the
process's peak memory.

The teacher and ModernBERT directories are random-weight stand-ins with the released architectures (no weights can
be downloaded here), written once under the work dir. The step runs the objective directly (no DeepSpeed, no
loader: a batch of random uint8 clips). Parts are timed twice: inside whole steps (each part's forward and backward
told apart by hooks, PartClock), and as isolated forward + backward passes of each part on a step's inputs. Peak
memory is the process's max RSS (weights, optimizer state, activations and the teacher together).

Usage: python bench/next_stage1_step.py [WORK_DIR] [--steps N] [--teacher-dtype bf16|fp32]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGLIP2_1B = dict(image_size=256, patch_size=16, hidden_size=1536, intermediate_size=6144, num_hidden_layers=40,
                  num_attention_heads=16)
MODERNBERT_LARGE = dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16,
                        local_attention=128, global_attn_every_n_layers=3, global_rope_theta=160000.0,
                        local_rope_theta=10000.0, vocab_size=50368)


def write_stand_ins(work: Path) -> tuple[Path, Path]:
    """Random-weight directories with the released teacher's and ModernBERT-large's architectures."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM, SiglipVisionConfig, SiglipVisionModel

    teacher, bert = work / "siglip2_1b_patch16_256", work / "modernbert_large"
    if not (teacher / "config.json").is_file():
        SiglipVisionModel(SiglipVisionConfig(**SIGLIP2_1B)).to(torch.bfloat16).save_pretrained(teacher)
    if not (bert / "config.json").is_file():
        ModernBertForMaskedLM(ModernBertConfig(**MODERNBERT_LARGE)).save_pretrained(bert)
    return teacher, bert


def max_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


class PartClock:
    """Forward and backward time of the encoder, predictor and decoder within one step. Forward: pre/post hooks.
    Backward runs the parts one after another: the decoder's ends when the gradient of the predictor's output
    arrives, the predictor's when that of the encoder's tokens does (the alignment heads' small backward falls in
    between), the encoder's when backward returns."""

    PARTS = ("encoder", "predictor", "decoder")

    def __init__(self, student):
        self.times: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        modules = {"encoder": student.encoder, "predictor": student.predictor, "decoder": student.decoder.net}
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda m, a, n=name: self.marks.__setitem__(n, time.perf_counter()))
            module.register_forward_hook(lambda m, a, out, n=name: self._forward_done(n, out))

    def reset(self) -> None:
        self.times = {f"{p}_{d}_s": 0.0 for p in self.PARTS for d in ("fwd", "bwd")}
        self.marks = {}

    def _mark(self, name):
        def hook(grad):
            self.marks.setdefault(name, time.perf_counter())
        return hook

    def _forward_done(self, name, out):
        self.times[f"{name}_fwd_s"] += time.perf_counter() - self.marks[name]
        tensor = {"encoder": lambda o: o.tokens, "predictor": lambda o: o}.get(name)
        if tensor is not None and torch.is_grad_enabled():
            tensor(out).register_hook(self._mark(f"{name}_grad"))

    def backward(self, loss) -> None:
        start = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        self.times["decoder_bwd_s"] = self.marks["predictor_grad"] - start
        self.times["predictor_bwd_s"] = self.marks["encoder_grad"] - self.marks["predictor_grad"]
        self.times["encoder_bwd_s"] = end - self.marks["encoder_grad"]


def isolated(objective, inputs) -> dict[str, float]:
    """Forward + backward of each part alone, on the inputs it gets in a step."""
    student = objective.trainable
    out = {}
    t0 = time.perf_counter()
    enc = student.encoder(inputs["video"], inputs["visible"], return_layers=student.align_index)
    from ivtrain.models.heads import cosine_distance

    loss = cosine_distance(student.aligned(enc.layers, inputs["visible"]), inputs["align_targets"])
    loss = loss + cosine_distance(student.final_clip_decoder(enc.pooled), inputs["pooled"])
    loss.backward()
    out["encoder"] = time.perf_counter() - t0
    tokens = enc.tokens.detach().requires_grad_(True)
    t0 = time.perf_counter()
    z = student.conditions(tokens, inputs["visible"])
    z.backward(torch.randn_like(z))
    out["predictor"] = time.perf_counter() - t0
    z = z.detach().requires_grad_(True)
    x0 = student.targets(inputs["video"], inputs["visible"])
    t0 = time.perf_counter()
    terms = student.decoder.loss(x0.flatten(0, 1), z.flatten(0, 1), inputs["timesteps"].flatten(),
                                 inputs["noise"].flatten(0, 1))
    terms["loss"].mean().backward()
    out["decoder"] = time.perf_counter() - t0
    student.zero_grad(set_to_none=True)
    return out


def bench(work: Path, steps: int, teacher_dtype: str, batch: int = 2) -> dict:
    from ivtrain.config import load_recipe
    from ivtrain.objectives.next_stage1 import NextStage1

    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir, bert_dir = write_stand_ins(work)
    recipe = load_recipe(ROOT / "recipes/next_stage1_b.yaml", [
        f"data.batch_size={batch}", "data.shards=unused.wids.json", f"next_stage1.teacher.path={teacher_dir}",
        f"next_stage1.predictor.path={bert_dir}", f"next_stage1.teacher.dtype={teacher_dtype}"])
    objective = NextStage1(recipe, torch.device("cpu"))
    student = objective.trainable.train()
    params = {name: sum(p.numel() for p in getattr(student, name).parameters())
              for name in ("encoder", "predictor", "decoder")}
    params["heads"] = sum(p.numel() for p in student.parameters()) - sum(params.values())
    params["teacher"] = sum(p.numel() for p in objective.teacher.parameters())
    optimizer = torch.optim.AdamW(objective.param_groups(recipe.optim, 1e-4), lr=1e-4)
    clock = PartClock(student)
    video = torch.randint(0, 256, (batch, 3, 16, 224, 224), dtype=torch.uint8)
    rows = []
    for step in range(steps):
        clock.reset()
        batch_dict = {"video": video, "size": batch, "clip_seeds": [step * batch + i for i in range(batch)]}
        t0 = time.perf_counter()
        inputs = objective.prepare(batch_dict)
        t1 = time.perf_counter()
        loss, metrics = student(**inputs)
        clock.backward(loss)
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        rows.append({"teacher_s": t1 - t0, "trainable_s": t2 - t1, "optimizer_s": t3 - t2, "step_s": t3 - t0,
                     **clock.times, "loss": float(loss)})
        print(json.dumps(rows[-1]), flush=True)
    alone = isolated(objective, inputs)
    flops = objective.flops_per_sample()
    return {"batch": batch, "teacher_dtype": teacher_dtype, "student_dtype": "fp32", "steps": rows,
            "isolated_fwd_bwd_s": alone, "params": params, "flops_per_clip": flops, "peak_rss_gb": max_rss_gb(),
            "tokens": {"visible": int(inputs["visible"][0].sum()), "hidden": int((~inputs["visible"][0]).sum()),
                       "predictor_sequence": student.encoder.num_cls + student.encoder.num_patches},
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", nargs="?", default="bench/out/next_stage1_step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--teacher-dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    result = bench(Path(args.work_dir), args.steps, args.teacher_dtype)
    print(json.dumps(result, indent=2))
    (Path(args.work_dir) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
