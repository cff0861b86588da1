"""Feature export: the features of chosen layers of a trained encoder, for clips or sliding windows over untrimmed
videos, as files a detection head or a retrieval index reads (`iv export features`).

The encoder is any objective's run (export.json + encoder.safetensors, ivtrain.export.load_encoder), or a released
checkpoint with its size preset (ivtrain.eval.checkpoint_run). Items and windows: ivtrain.eval.feature_sources;
files, journal and index: ivtrain.eval.feature_store.

Layers are block indices counted from 0 (block i's output, what InternVideo2.forward returns under
return_layers=(i,)); negative ones count from the last block (-1 is the last, whose output is the encoder's
`tokens`). No block past the deepest one asked for is run: layer 7 of a 48-block encoder costs 8 blocks.
Pooling of a layer's (1 + N, C) tokens of one window, CLS first:
    tokens  all of them, (1 + N, C)
    frames  the patch tokens averaged over space, one vector per temporal token: (T', C)
    mean    the patch tokens averaged: (C,)
    attn    the encoder's attention-pooling head (its pooled output, what retrieval and classification read):
            (pool_out_dim,); the head reads the last layer, so attn takes --layers -1 only
On CUDA the encoder runs under bf16 autocast (fp32 on the CPU); features are stored as float32 or float16.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ivkit.progress import progress
from ivtrain.data.transforms import normalize
from ivtrain.devices import pick_device
from ivtrain.eval.feature_sources import Source, Windows, WindowStream, parse_stride, single_thread_worker
from ivtrain.eval.feature_store import FeatureStore
from ivtrain.eval.probe import prepare_encoder
from ivtrain.models.vit import InternVideo2

POOLS = ("tokens", "frames", "mean", "attn")
FORMATS = ("safetensors", "npy", "actionformer")
STORED = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class ExportOptions:
    layers: str = "-1"            # comma-separated block indices (module docstring)
    pool: str = "mean"
    window: int | None = None     # source frames per window; None: each clip or video is one window
    stride: str | None = None     # frames ("16") or seconds ("0.5s") between windows; default: the window
    format: str = "safetensors"
    dtype: str = "float32"        # stored features
    batch_size: int = 8           # windows per encoder forward
    workers: int = 2              # decoding processes
    device: str = "auto"
    retry_failed: bool = False    # redo items the journal records as failed


@dataclass
class ExportSummary:
    items: int = 0                # items exported by this call
    failed: int = 0
    skipped: int = 0              # finished by an earlier call
    windows: int = 0
    seconds: float = 0.0
    encoder_seconds: float = 0.0  # time inside the encoder (the rest: waiting for decoded windows, writing)
    index: str = ""
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.items / self.seconds if self.seconds else 0.0
        busy = 100 * self.encoder_seconds / self.seconds if self.seconds else 0.0
        return (f"exported {self.items} items ({self.windows} windows) in {self.seconds:.1f} s: {rate:.2f} items/s, "
                f"{self.windows / max(self.seconds, 1e-9):.2f} windows/s, encoder busy {busy:.0f} %; "
                f"{self.failed} failed, {self.skipped} done before; index {self.index}")


def resolve_layers(text: str, depth: int) -> list[int]:
    """'7,-1' -> [7, depth - 1], in the order given, each once."""
    layers: list[int] = []
    for part in text.split(","):
        try:
            i = int(part)
        except ValueError:
            raise ValueError(f"--layers takes block indices like 7,-1, got {text!r}") from None
        if not -depth <= i < depth:
            raise ValueError(f"--layers {i}: the encoder has {depth} blocks (layers 0..{depth - 1}, or "
                             f"-{depth}..-1 from the last)")
        if i % depth not in layers:
            layers.append(i % depth)
    return layers


def check_options(options: ExportOptions, layers: list[int], depth: int) -> None:
    if options.pool not in POOLS:
        raise ValueError(f"--pool must be one of {', '.join(POOLS)}, got {options.pool!r}")
    if options.format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {options.format!r}")
    if options.dtype not in STORED:
        raise ValueError(f"--dtype must be one of {', '.join(STORED)}, got {options.dtype!r}")
    if options.batch_size < 1 or options.workers < 0:
        raise ValueError("--batch-size must be at least 1 and --workers at least 0")
    if options.pool == "attn" and layers != [depth - 1]:
        raise ValueError("--pool attn is the encoder's attention-pooling head, which reads the last layer: "
                         "give --layers -1")
    if options.format == "actionformer" and (len(layers) != 1 or options.pool not in ("mean", "attn")
                                             or options.window is None):
        raise ValueError("--format actionformer writes one [T, C] array per video: give one layer, --pool mean "
                         "or attn, and --window (with --stride)")


def open_encoder(run: str | Path, size: str | None = None, frames: int = 0) -> tuple[InternVideo2, dict, dict]:
    """(encoder, its configuration, what identifies it in the export's settings): a run directory, or a checkpoint
    file with its size preset. frames: load at this frame count (the position table resized)."""
    run = Path(run)
    if run.is_file():
        from ivtrain.eval.checkpoint_run import encoder_from_checkpoint

        if not size:
            raise ValueError(f"{run} is a checkpoint file: give its architecture with --size (b, l, 1b, 6b), "
                             "and --frames when it is not the preset's")
        encoder, config = encoder_from_checkpoint(run, size, frames)
        st = run.stat()
        identity = {"checkpoint": str(run.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "size": size}
    else:
        from ivtrain.export import EXPORT, load_encoder

        overrides = {"num_frames": frames} if frames else {}
        encoder, config = load_encoder(run, attn_backend="sdpa", checkpoint_activations=False, **overrides)
        identity = {"run": str(run.resolve()),
                    "export_sha256": hashlib.sha256((run / EXPORT).read_bytes()).hexdigest()[:16]}
    return encoder, config, {**identity, "frames": encoder.cfg.num_frames}


def pool_layer(encoder: InternVideo2, x: torch.Tensor, pool: str) -> torch.Tensor:
    """One layer's (B, 1 + N, C) tokens, pooled (module docstring)."""
    if pool == "tokens":
        return x
    if pool == "attn":
        return encoder.clip_projector(x)
    patches = x[:, 1:]   # the one CLS token first
    if pool == "mean":
        return patches.mean(1)
    return patches.reshape(x.shape[0], encoder.grid[0], -1, x.shape[-1]).mean(2)


@torch.no_grad()
def encode(encoder: InternVideo2, video: torch.Tensor, config: dict, layers: list[int], pool: str,
           device: torch.device) -> dict[int, torch.Tensor]:
    """uint8 windows (B, 3, T, S, S) -> layer -> pooled features (float32, on the CPU)."""
    video = normalize(video.to(device, non_blocking=True), config["mean"], config["std"])
    out = {}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        x = encoder.embed(video)
        for i, block in enumerate(encoder.blocks[:max(layers) + 1]):   # InternVideo2.forward, cut at the deepest
            x = block(x)
            if i in layers:
                out[i] = pool_layer(encoder, x, pool).float().cpu()
    return out


class Pending:
    """One item's windows as they come back from the encoder."""

    def __init__(self):
        self.spans: dict[int, tuple[int, int]] = {}
        self.feats: dict[int, dict[int, torch.Tensor]] = {}   # window number -> layer -> features
        self.fps, self.total = float("nan"), None

    def complete(self) -> bool:
        return self.total is not None and len(self.feats) == self.total


def _keep(batch):
    return batch   # chunks are built in the workers


def export_features(run: str | Path, source: str, out: str | Path, options: ExportOptions | None = None,
                    size: str | None = None, frames: int = 0) -> ExportSummary:
    options = options or ExportOptions()
    device = pick_device(options.device, "--device")
    encoder, config, identity = open_encoder(run, size, frames)
    layers = resolve_layers(options.layers, encoder.depth)
    check_options(options, layers, encoder.depth)
    stride, stride_s = parse_stride(options.stride)
    windows = Windows(encoder.cfg.num_frames, config["img_size"], options.window, stride, stride_s)
    src = Source(source)
    settings = {"encoder": identity, "layers": layers, "pool": options.pool, "windows": asdict(windows),
                "format": options.format, "dtype": options.dtype, "source": str(Path(source).resolve())}
    store = FeatureStore(out, settings)
    done = store.done(options.retry_failed)
    todo = [pos for pos, item in enumerate(src.items) if item.id not in done]
    summary = ExportSummary(skipped=len(src.items) - len(todo))
    encoder = prepare_encoder(encoder, device)
    stream = WindowStream(src, todo, windows, options.batch_size)
    loader = DataLoader(stream, batch_size=None, num_workers=options.workers, collate_fn=_keep,
                        pin_memory=device.type == "cuda", worker_init_fn=single_thread_worker,
                        prefetch_factor=2 if options.workers else None)
    pending: dict[int, Pending] = {}
    queue: list[tuple[int, int, torch.Tensor]] = []   # (item position, window number, uint8 clip)
    dtype = STORED[options.dtype]
    start = time.perf_counter()

    def run_batch(batch):
        t = time.perf_counter()
        feats = encode(encoder, torch.stack([clip for _, _, clip in batch]), config, layers, options.pool, device)
        summary.encoder_seconds += time.perf_counter() - t
        for row, (pos, number, _) in enumerate(batch):
            if pos in pending:
                pending[pos].feats[number] = {layer: f[row].to(dtype) for layer, f in feats.items()}

    def finish(advance):
        for pos in [p for p, item in pending.items() if item.complete()]:
            item = pending.pop(pos)
            numbers = range(item.total)
            feats = {layer: torch.stack([item.feats[w][layer] for w in numbers]) for layer in layers}
            store.write(src.with_manifest_ids(src.items[pos]), feats, [item.spans[w] for w in numbers], item.fps)
            summary.items, summary.windows = summary.items + 1, summary.windows + item.total
            advance()

    with progress(f"export features of {len(todo)} items", len(todo), unit="items") as advance:
        for chunk in loader:
            pos = chunk["pos"]
            if "error" in chunk:
                pending.pop(pos, None)
                queue = [q for q in queue if q[0] != pos]
                store.fail(src.with_manifest_ids(src.items[pos]), chunk["error"])
                summary.failed += 1
                summary.errors.append(f"{src.items[pos].id}: {chunk['error']}")
                advance()
                continue
            item = pending.setdefault(pos, Pending())
            item.fps = chunk["fps"]
            if chunk["total"] is not None:   # the item's last chunk
                item.total = chunk["total"]
            for k, span in enumerate(chunk["spans"]):
                item.spans[chunk["first"] + k] = span
                queue.append((pos, chunk["first"] + k, chunk["clips"][k]))
            while len(queue) >= options.batch_size:
                run_batch(queue[:options.batch_size])
                del queue[:options.batch_size]
            finish(advance)
        if queue:
            run_batch(queue)
        finish(advance)
    summary.seconds = time.perf_counter() - start
    summary.index = str(store.write_index())
    for error in summary.errors[:5]:
        print(f"export features: failed {error}", file=sys.stderr)
    return summary
