"""InternVideo-Next stage 2, B recipe (recipes/next_stage2_b.yaml: ViT-B/14, 32 frames at 224 px, two multi-block
views, the stage-1 predictor: the last 5 layers of a ModernBERT-large, over all 4 + 8192 tokens) at batch 1 on the
CPU: where a training step's time goes (teacher, student encoder, predictor + head, optimizer) and the process's
peak memory.

The stage-1 run it starts from is written here at initialization (an exported B encoder at 16 frames and a
predictor over a ModernBERT-large-sized config: only config.json is read in stage 2, the weights come from the
export). The step runs the objective directly (no DeepSpeed, no loader: random uint8 clips, masks drawn from clip
seeds as the objective's collate draws them). In the step, the teacher's time is `prepare`; the encoder's and the
predictor's forward and backward times come from hooks (PartClock). Peak memory is the process's max RSS.

Usage: python bench/next_stage2_step.py [WORK_DIR] [--steps N] [--batch N]
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
sys.path.insert(0, str(ROOT / "bench"))

from next_stage1_step import MODERNBERT_LARGE, max_rss_gb  # noqa: E402


def write_stage1_b(work: Path) -> Path:
    """A next_stage1 B run directory at initialization: recipe.json and the encoder + predictor export."""
    from transformers import ModernBertConfig

    from ivtrain.config import load_recipe, to_dict
    from ivtrain.export import write_export
    from ivtrain.models.predictor import ModernBertLayers, Predictor, read_modernbert
    from ivtrain.models.vit import InternVideo2
    from ivtrain.objectives.next_stage1 import NextStage1

    run = work / "next_stage1_b"
    if (run / "export.json").is_file():
        return run
    bert = work / "modernbert_large"
    ModernBertConfig(**MODERNBERT_LARGE).save_pretrained(bert)
    recipe = load_recipe(ROOT / "recipes/next_stage1_b.yaml", ["data.shards=unused.wids.json",
                                                               f"next_stage1.predictor.path={bert}"])
    vit = NextStage1.student_config(recipe)
    encoder = InternVideo2(vit, pool_out_dim=recipe.section.pool_dim)
    layers = ModernBertLayers(read_modernbert(bert), recipe.section.predictor.layers)
    predictor = Predictor(vit.embed_dim, encoder.grid, encoder.num_cls, layers)
    run.mkdir(parents=True, exist_ok=True)
    (run / "recipe.json").write_text(json.dumps(to_dict(recipe)))
    config = {**encoder.config(), "mean": recipe.data.mean, "std": recipe.data.std}
    write_export(run, "next_stage1", {"encoder": encoder.state_dict(), "predictor": predictor.state_dict()}, config)
    return run


class PartClock:
    """Forward and backward seconds of the encoder and of the predictor (+ head) within one step, summed over the
    views. Forward: pre/post hooks. Backward runs on this thread one node at a time, each view's predictor before
    its encoder: a hook on each view's predictor output and one on its encoder tokens mark where the gradient
    arrives, and each stretch between two marks belongs to the part whose gradient arrived at the first (the time
    before the first mark, the head and loss, to the predictor)."""

    def __init__(self, encoder: torch.nn.Module, predictor: torch.nn.Module):
        self.times: dict[str, float] = {}
        self.marks: list[tuple[float, str]] = []
        self.start: dict[str, float] = {}
        for name, m in (("encoder", encoder), ("predictor", predictor)):
            m.register_forward_pre_hook(lambda mod, a, n=name: self.start.__setitem__(n, time.perf_counter()))
            m.register_forward_hook(lambda mod, a, o, n=name: self._forward_done(n, o))

    def _forward_done(self, name: str, out) -> None:
        self.times[f"{name}_fwd_s"] = self.times.get(f"{name}_fwd_s", 0.0) + time.perf_counter() - self.start[name]
        tensor = out.tokens if name == "encoder" else out
        # the gradient reaching the predictor's output starts its backward; reaching the encoder's tokens, the
        # encoder's
        tensor.register_hook(lambda g, n=("predictor" if name == "predictor" else "encoder"):
                             self.marks.append((time.perf_counter(), n)))

    def backward(self, loss: torch.Tensor) -> None:
        self.marks = [(time.perf_counter(), "predictor")]
        loss.backward()
        self.marks.append((time.perf_counter(), "end"))
        for (t0, part), (t1, _) in zip(self.marks, self.marks[1:]):
            self.times[f"{part}_bwd_s"] = self.times.get(f"{part}_bwd_s", 0.0) + t1 - t0
        self.order = [part for _, part in self.marks]


def bench(work: Path, steps: int, batch: int) -> dict:
    from ivtrain.config import load_recipe
    from ivtrain.data.masking import multiblock_masks
    from ivtrain.objectives.next_stage2 import NextStage2

    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    stage1 = write_stage1_b(work)
    recipe = load_recipe(ROOT / "recipes/next_stage2_b.yaml", [f"data.batch_size={batch}", f"next_stage2.init={stage1}",
                                                               "data.shards=unused.wids.json"])
    objective = NextStage2(recipe, torch.device("cpu"))
    student = objective.trainable.train()
    params = {name: sum(p.numel() for p in getattr(student, name).parameters())
              for name in ("encoder", "predictor", "proj")}
    params["teacher"] = sum(p.numel() for p in objective.teacher.parameters())
    optimizer = torch.optim.AdamW(objective.param_groups(recipe.optim, 1e-4), lr=1e-4)
    clock = PartClock(student.encoder, student.predictor)
    frames, size = recipe.data.num_frames, recipe.data.image_size
    video = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8)
    rows = []
    for step in range(steps):
        clock.times = {}
        seeds = [step * batch + i for i in range(batch)]   # the masks as the loader's workers draw them
        batch_dict = {"video": video, "size": batch, "clip_seeds": seeds,
                      "masks": multiblock_masks(objective.views, objective.grid, seeds)}
        t0 = time.perf_counter()
        inputs = objective.prepare(batch_dict)
        t1 = time.perf_counter()
        loss, _ = student(**inputs)
        t2 = time.perf_counter()
        clock.backward(loss)
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        rows.append({"teacher_s": t1 - t0, "trainable_fwd_s": t2 - t1, "trainable_bwd_s": t3 - t2,
                     "optimizer_s": t4 - t3, "step_s": t4 - t0,
                     **clock.times, "backward_order": clock.order, "loss": float(loss)})
        print(json.dumps(rows[-1]), flush=True)
    return {"batch": batch, "frames": frames, "dtype": "fp32", "steps": rows,
            "params": params, "flops_per_clip": objective.flops_per_sample(), "peak_rss_gb": max_rss_gb(),
            "visible_tokens_per_view": [int(v[0].sum()) for v in inputs["visible"]],
            "predictor_sequence": student.encoder.num_cls + student.encoder.num_patches,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", nargs="?", default="bench/out/next_stage2_step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    result = bench(Path(args.work_dir), args.steps, args.batch)
    print(json.dumps(result, indent=2))
    (Path(args.work_dir) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
