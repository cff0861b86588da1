"""Attentive probe: a frozen video encoder, one attention-pooling head and a linear classifier.

Features of every clip (all tokens, no mask, evaluation-mode sampling and centre crop) are
computed once with the frozen encoder; the probe (AttentionPooling -> LayerNorm -> Linear) is
then trained on the train set's features and scored on the eval set. Labels come from the
`label` field of each sample's json (shards written with labels included).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivkit.progress import progress
from ivkit.typed_yaml import build
from ivtrain.config import Recipe, load_recipe
from ivtrain.data.shards import make_loader
from ivtrain.data.transforms import normalize
from ivtrain.devices import pick_device
from ivtrain.models.attention import resolve_backend
from ivtrain.models.vit import AttentionPooling, InternVideo2


@dataclass
class ProbeResult:
    train_accuracy: float
    eval_accuracy: float
    classes: list
    num_train: int
    num_eval: int
    eval_confusion: list[list[int]]  # [true class][predicted class], both in `classes` order

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def load_encoder(run_dir: str | Path | None, recipe: Recipe | None = None, random_init: bool = False,
                 seed: int = 0) -> tuple[InternVideo2, Recipe]:
    """The student encoder of a finished run (recipe.json + student.safetensors), or a random one."""
    if run_dir is not None:
        run_dir = Path(run_dir)
        recipe = build(Recipe, json.loads((run_dir / "recipe.json").read_text()))
    if recipe is None:
        raise ValueError("need a run directory or a recipe")
    vit = replace(recipe.model, img_size=recipe.model.img_size or recipe.data.image_size,
                  num_frames=recipe.model.num_frames or recipe.data.num_frames, checkpoint_activations=False,
                  attn_backend="sdpa")  # built on the CPU; encode_set picks the backend of the device it runs on
    torch.manual_seed(seed)
    weights = None
    if not random_init:
        from safetensors.torch import load_file

        weights = load_file(str(Path(run_dir) / "student.safetensors"))
        weights = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    pool_dim = weights["clip_projector.cross_attn.proj.weight"].shape[0] if weights else None
    encoder = InternVideo2(vit, pool_out_dim=pool_dim)
    if weights is not None:
        encoder.load_state_dict(weights, strict=True)
    return encoder.eval(), recipe


@torch.no_grad()
def encode_set(encoder: InternVideo2, recipe: Recipe, shards: str, batch_size: int = 8,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, list]:
    """(N, 1 + tokens, dim) float32 features on the CPU and the raw labels of every clip in `shards` (one
    pass, fixed order, the last partial batch kept). On CUDA the encoder runs under bf16 autocast."""
    device = torch.device(device)
    data = replace(recipe.data, shards=shards, train=False, shuffle=False, batch_size=batch_size,
                   teacher_frames=recipe.data.num_frames, num_workers=min(2, recipe.data.num_workers))
    loader, stream = make_loader(data, epochs=1, keep_last=True, pin_memory=device.type == "cuda")
    encoder = encoder.to(device)
    encoder.set_backend(resolve_backend("auto", device))  # flash-attn where CUDA has it: same weights, same outputs
    feats, labels = [], []
    with progress(f"encode {Path(str(shards)).name}", len(stream.index)) as advance, \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in loader:
            advance(len(batch["keys"]) + batch["skipped"])
            if batch["video"] is None:
                continue
            video = normalize(batch["video"].to(device, non_blocking=True), data.mean, data.std)
            feats.append(encoder(video).tokens.float().cpu())
            labels.extend(batch["labels"])
    if any(lb is None for lb in labels):
        raise ValueError(f"{shards}: some samples carry no label (write the shards with labels included)")
    return torch.cat(feats), labels


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, epochs: int = 100,
                lr: float = 1e-3, seed: int = 0, heads: int = 4, device: torch.device | str = "cpu") -> nn.Module:
    """The probe is trained in float32 on `device`; the cached features stay on the CPU and go over
    a minibatch at a time (a large eval set's tokens need not fit in GPU memory)."""
    torch.manual_seed(seed)
    dim = train_x.shape[-1]
    probe = nn.Sequential(AttentionPooling(dim, heads, dim), nn.LayerNorm(dim), nn.Linear(dim, num_classes)).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.05)
    n = train_x.shape[0]
    batch = min(32, n)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(probe(train_x[idx].to(device)), train_y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


@torch.no_grad()
def predict(probe: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = next(probe.parameters()).device
    return torch.cat([probe(x[i:i + batch_size].to(device)).argmax(-1).cpu() for i in range(0, len(x), batch_size)])


def accuracy(probe: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(probe, x) == y).float().mean())


def confusion(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[list[int]]:
    counts = torch.bincount(y * num_classes + predict(probe, x), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).tolist()


def run_probe(train_shards: str, eval_shards: str, run_dir: str | Path | None = None,
              recipe: Recipe | None = None, random_init: bool = False, epochs: int = 100, lr: float = 1e-3,
              seed: int = 0, device: str = "auto", batch_size: int = 8) -> ProbeResult:
    dev = pick_device(device, "--device")
    encoder, recipe = load_encoder(run_dir, recipe, random_init, seed)
    train_x, train_labels = encode_set(encoder, recipe, train_shards, batch_size, dev)
    eval_x, eval_labels = encode_set(encoder, recipe, eval_shards, batch_size, dev)
    classes = sorted(set(train_labels), key=str)
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(lb) for lb in eval_labels if lb not in lookup})
    if unknown:
        raise ValueError(f"eval labels missing from the train set: {unknown[:5]}")
    train_y = torch.tensor([lookup[lb] for lb in train_labels])
    eval_y = torch.tensor([lookup[lb] for lb in eval_labels])
    probe = train_probe(train_x, train_y, len(classes), epochs, lr, seed, device=dev)
    eval_confusion = confusion(probe, eval_x, eval_y, len(classes))
    eval_accuracy = sum(eval_confusion[i][i] for i in range(len(classes))) / len(eval_y)
    return ProbeResult(accuracy(probe, train_x, train_y), eval_accuracy, classes, len(train_y), len(eval_y),
                       eval_confusion)


def probe_from_recipe(recipe_path: str | Path, overrides: list[str]) -> Recipe:
    return load_recipe(recipe_path, overrides)
