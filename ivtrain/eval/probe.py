"""Attentive probe: a frozen video encoder, one attention-pooling head and a linear classifier.

The encoder sees every clip whole (all tokens, no mask, evaluation-mode sampling and centre
crop); the probe (AttentionPooling -> LayerNorm -> Linear) is trained on the train set's tokens
and scored on the eval set. Labels come from the `label` field of each sample's json (shards
written with labels included).

Where the tokens live is the one choice that matters at scale. `cache` encodes each set once and
keeps all its tokens in host memory: fast, and right for small eval sets. At ViT-L size one clip
is 8.4 MB of float32 tokens (2049 x 1024), so a Kinetics-sized train set needs terabytes; `stream`
(what V-JEPA's frozen evaluation does) encodes each minibatch afresh, holds one batch, and pays
one encoder pass per epoch. `auto` caches when the cache fits in half of the memory available
now, and streams otherwise. Both modes visit the same minibatches in the same order, so on the
same data they train the same probe (when every clip decodes: a skipped clip shifts the cache's
rows against the stream's sample ids, so the two orders part from there).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn as nn
import torch.nn.functional as F

from ivkit.progress import progress
from ivtrain.config import DataConfig, Recipe
from ivtrain.data.index import ShardIndex
from ivtrain.data.loader import epoch_permutation, video_loader
from ivtrain.data.transforms import normalize
from ivtrain.devices import pick_device
from ivtrain.export import load_encoder as load_run_encoder
from ivtrain.models.attention import resolve_backend
from ivtrain.models.layers import AttentionPooling
from ivtrain.models.vit import InternVideo2, encoder_from_config

PROBE_BATCH = 32  # clips per probe optimizer step


@dataclass
class ProbeResult:
    train_accuracy: float
    eval_accuracy: float
    classes: list
    num_train: int
    num_eval: int
    eval_confusion: list[list[int]]  # [true class][predicted class], both in `classes` order
    features: str                    # where the tokens lived: cache | stream

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def load_encoder(run_dir: str | Path | None, recipe: Recipe | None = None, random_init: bool = False,
                 seed: int = 0) -> tuple[InternVideo2, dict]:
    """(the encoder of a finished run of any objective, or a randomly initialized one of the same architecture
    (random_init), or of the encoder a recipe would train; its configuration with the input's mean and std)."""
    if run_dir is not None and not random_init:
        # built on the CPU with SDPA; prepare_encoder picks the backend of the device it runs on
        return load_run_encoder(run_dir, attn_backend="sdpa", checkpoint_activations=False)
    if run_dir is not None:
        from ivtrain.export import read_export

        config = read_export(run_dir)["encoder"]
    elif recipe is not None:
        from ivtrain.objectives import objective_class

        config = objective_class(recipe.objective, recipe.objective_module).encoder_config_of(recipe)
    else:
        raise ValueError("need a run directory or a recipe")
    torch.manual_seed(seed)
    return encoder_from_config(config, attn_backend="sdpa", checkpoint_activations=False).eval(), config


CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def eval_data(config: dict, shards: str, batch_size: int, shuffle: bool = False) -> DataConfig:
    """The clips as the probe sees them: the encoder's frames and resolution, centre crop, no augmentation."""
    return DataConfig(shards=shards, image_size=config["img_size"], mean=list(config["mean"]), std=list(config["std"]),
                      train=False, shuffle=shuffle, batch_size=batch_size, num_workers=2)


def require_labels(labels: list, shards: str) -> None:
    if any(lb is None for lb in labels):
        raise ValueError(f"{shards}: some samples carry no label (write the shards with labels included)")


@torch.no_grad()
def encoded_batches(encoder: InternVideo2, data: DataConfig, index: ShardIndex, device: torch.device,
                    seed: int = 0, epoch: int = 0, advance=None):
    """(tokens (B, cls + N, dim) on `device`, raw labels) for each batch of one pass over `index` in the
    loader's order for (seed, epoch); the last partial batch kept. On CUDA under bf16 autocast."""
    frames = encoder.cfg.num_frames
    loader, _ = video_loader(data, frames, seed=seed, start=epoch * len(index), epochs=epoch + 1, index=index,
                             keep_last=True, pin_memory=device.type == "cuda")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in loader:
            if advance is not None:
                advance(batch["size"] + sum(batch["skipped"].values()))
            if not batch["size"]:
                continue
            require_labels(batch["labels"], data.shards)
            video = normalize(batch["video"].to(device, non_blocking=True), data.mean, data.std)
            yield encoder(video).tokens, batch["labels"]


def prepare_encoder(encoder: InternVideo2, device: torch.device) -> InternVideo2:
    encoder = encoder.to(device)
    encoder.set_backend(resolve_backend("auto", device))  # flash-attn where CUDA has it: same weights, same outputs
    return encoder


def tokens_per_clip(encoder: InternVideo2) -> int:
    return encoder.num_patches + encoder.num_cls


def cache_bytes(encoder: InternVideo2, clips: int, dtype: torch.dtype = torch.float32) -> int:
    return clips * tokens_per_clip(encoder) * encoder.cfg.embed_dim * dtype.itemsize


def encode_set(encoder: InternVideo2, config: dict, shards: str, batch_size: int = 8,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               index: ShardIndex | None = None) -> tuple[torch.Tensor, list]:
    """(N, cls + tokens, dim) features on the CPU, in `dtype`, and the raw labels of every clip in `shards`,
    in shard order (undecodable clips left out). Written into one preallocated tensor: no second copy."""
    device = torch.device(device)
    data = eval_data(config, shards, batch_size)
    index = index or ShardIndex.open(shards)
    encoder = prepare_encoder(encoder, device)
    feats = torch.empty(len(index), tokens_per_clip(encoder), encoder.cfg.embed_dim, dtype=dtype)
    labels: list = []
    with progress(f"encode {Path(str(shards)).name}", len(index)) as advance:
        for tokens, batch_labels in encoded_batches(encoder, data, index, device, advance=advance):
            feats[len(labels):len(labels) + len(batch_labels)] = tokens.to(dtype).cpu()
            labels.extend(batch_labels)
    return feats[:len(labels)], labels


class CachedFeatures:
    """Every clip's tokens, encoded once and held in host memory."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    def batches(self, epoch: int | None = None):
        """Minibatches of (float32 tokens, class ids): shuffled for `epoch`, or in order when it is None."""
        order = np.arange(len(self.y)) if epoch is None else epoch_permutation(len(self.y), self.seed, epoch)
        for i in range(0, len(order), self.batch_size):
            idx = torch.from_numpy(order[i:i + self.batch_size])
            yield self.x[idx].float(), self.y[idx]


class StreamedFeatures:
    """Tokens encoded afresh for every minibatch: one batch in memory, one encoder pass per epoch."""

    def __init__(self, encoder: InternVideo2, config: dict, shards: str, lookup: dict, batch_size: int,
                 seed: int, device: torch.device, index: ShardIndex | None = None):
        self.encoder, self.lookup, self.seed, self.device = encoder, lookup, seed, device
        self.index = index or ShardIndex.open(shards)
        self.data = eval_data(config, shards, batch_size, shuffle=True)

    def batches(self, epoch: int | None = None):
        data = self.data if epoch is not None else replace(self.data, shuffle=False)
        for tokens, labels in encoded_batches(self.encoder, data, self.index, self.device, self.seed, epoch or 0):
            yield tokens.float(), torch.tensor([self.lookup[lb] for lb in labels])


def read_labels(index: ShardIndex, label_key: str, shards: str) -> list:
    """Every sample's label from its json alone (no video decoded)."""
    labels = [index.metadata(i).get(label_key) for i in range(len(index))]
    require_labels(labels, shards)
    return labels


def train_probe(features, num_classes: int, dim: int, epochs: int = 100, lr: float = 1e-3, seed: int = 0,
                heads: int = 4, device: torch.device | str = "cpu") -> nn.Module:
    """Float32 probe on `device`; `features.batches(epoch)` hands it one minibatch at a time (cached tokens
    go over a minibatch at a time too: a large set's tokens need not fit in GPU memory)."""
    torch.manual_seed(seed)
    probe = nn.Sequential(AttentionPooling(dim, heads, dim), nn.LayerNorm(dim), nn.Linear(dim, num_classes)).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.05)
    with progress("train probe", epochs) as advance:
        for epoch in range(epochs):
            for x, y in features.batches(epoch):
                loss = F.cross_entropy(probe(x.to(device)), y.to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
            advance()
    return probe.eval()


@torch.no_grad()
def confusion(probe: nn.Module, features, num_classes: int) -> list[list[int]]:
    """[true class][predicted class] counts over one ordered pass."""
    device = next(probe.parameters()).device
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long)
    for x, y in features.batches(None):
        pred = probe(x.to(device)).argmax(-1).cpu()
        counts += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).tolist()


def accuracy_of(matrix: list[list[int]]) -> float:
    return sum(matrix[i][i] for i in range(len(matrix))) / max(1, sum(map(sum, matrix)))


def available_memory_bytes() -> int:
    return psutil.virtual_memory().available


def choose_features(mode: str, need_bytes: int, free_bytes: int) -> str:
    if mode not in ("auto", "cache", "stream"):
        raise ValueError(f"--features must be auto, cache or stream, got {mode!r}")
    if mode != "auto":
        return mode
    return "cache" if need_bytes <= free_bytes // 2 else "stream"


def class_lookup(train_labels: list, eval_labels: list) -> tuple[list, dict]:
    classes = sorted(set(train_labels), key=str)
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(lb) for lb in eval_labels if lb not in lookup})
    if unknown:
        raise ValueError(f"eval labels missing from the train set: {unknown[:5]}")
    return classes, lookup


def run_probe(train_shards: str, eval_shards: str, run_dir: str | Path | None = None,
              recipe: Recipe | None = None, random_init: bool = False, epochs: int = 100, lr: float = 1e-3,
              seed: int = 0, device: str = "auto", batch_size: int = 8, features: str = "auto",
              cache_dtype: str = "float32") -> ProbeResult:
    """batch_size: clips per encoder forward when caching. The probe's minibatch is PROBE_BATCH clips in
    both modes (streaming encodes one minibatch per forward)."""
    dev = pick_device(device, "--device")
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"--cache-dtype must be one of {sorted(CACHE_DTYPES)}, got {cache_dtype!r}")
    dtype = CACHE_DTYPES[cache_dtype]
    encoder, config = load_encoder(run_dir, recipe, random_init, seed)
    train_index, eval_index = (ShardIndex.open(s) for s in (train_shards, eval_shards))
    need = cache_bytes(encoder, len(train_index) + len(eval_index), dtype)
    free = available_memory_bytes()
    mode = choose_features(features, need, free)
    if features == "auto" and mode == "stream":  # say why this run costs an encoder pass per epoch
        print(f"probe: the {cache_dtype} tokens of {len(train_index) + len(eval_index)} clips need "
              f"{need / 2**30:.1f} GiB, more than half the {free / 2**30:.1f} GiB free: "
              f"streaming, one encoder pass over the train set for each of {epochs} epochs "
              f"(--cache-dtype bfloat16 halves the cache)", file=sys.stderr)
    probe_batch = min(PROBE_BATCH, len(train_index))
    if mode == "cache":
        train_x, train_labels = encode_set(encoder, config, train_shards, batch_size, dev, dtype, train_index)
        eval_x, eval_labels = encode_set(encoder, config, eval_shards, batch_size, dev, dtype, eval_index)
        classes, lookup = class_lookup(train_labels, eval_labels)
        train_set = CachedFeatures(train_x, torch.tensor([lookup[lb] for lb in train_labels]), probe_batch, seed)
        eval_set = CachedFeatures(eval_x, torch.tensor([lookup[lb] for lb in eval_labels]), PROBE_BATCH, seed)
    else:
        key = DataConfig.label_key
        classes, lookup = class_lookup(read_labels(train_index, key, train_shards),
                                       read_labels(eval_index, key, eval_shards))
        encoder = prepare_encoder(encoder, dev)
        train_set = StreamedFeatures(encoder, config, train_shards, lookup, probe_batch, seed, dev, train_index)
        eval_set = StreamedFeatures(encoder, config, eval_shards, lookup, PROBE_BATCH, seed, dev, eval_index)
    probe = train_probe(train_set, len(classes), encoder.cfg.embed_dim, epochs, lr, seed, device=dev)
    eval_confusion = confusion(probe, eval_set, len(classes))
    train_confusion = confusion(probe, train_set, len(classes))
    return ProbeResult(accuracy_of(train_confusion), accuracy_of(eval_confusion), classes,
                       sum(map(sum, train_confusion)), sum(map(sum, eval_confusion)), eval_confusion, mode)
