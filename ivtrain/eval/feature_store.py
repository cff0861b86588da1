"""Where exported features go: one file per item, a journal of finished items, and one Parquet index.

OUT/features.json   the settings that decide what the files hold (encoder, layers, pooling, windows, format);
                    a rerun with other settings into the same OUT is refused
OUT/features/       per item: <id>.safetensors (tensors layer<L> [windows, ...], and start_frame, end_frame,
                    start_s, end_s [windows]), or <id>.layer<L>.npy, or, in the ActionFormer layout, <id>.npy
                    [windows, C]: one feature vector per window at a fixed stride
OUT/progress.jsonl  one line per finished item (ok or failed), appended after its files were renamed into place
OUT/index.parquet   one row per item, layer and window (id, clip_id, video_id, source, status, layer,
                    window_index: the window's row in the item's array, start_frame, end_frame, start_s, end_s, fps,
                    file, tensor: its name in a safetensors file, shape: one window's, dtype), and one row per
                    failed item (status failed, error); written from the journal when the export ends

Resuming: a file is written under a temporary name and renamed, then the journal line is appended; a rerun skips
the ids the journal names and redoes the rest (rewriting any file an interrupted item left), so every item ends up
once in the index however often the export was killed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

SETTINGS = "features.json"
JOURNAL = "progress.jsonl"
INDEX = "index.parquet"
FILES = "features"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:   # a file object: np.save would add .npy to a path
            np.save(f, array)
    _atomic(path, write)


class FeatureStore:
    def __init__(self, out: str | Path, settings: dict):
        self.out = Path(out)
        self.files = self.out / FILES
        self.files.mkdir(parents=True, exist_ok=True)
        self.format = settings["format"]
        path = self.out / SETTINGS
        if path.exists():
            before = json.loads(path.read_text())
            changed = [f"{k}: {before.get(k)} then, {settings.get(k)} now" for k in sorted(set(before) | set(settings))
                       if before.get(k) != settings.get(k)]
            if changed:
                raise ValueError(f"{self.out} holds an export with other settings ({'; '.join(changed)}): "
                                 "give another --out")
        else:
            _atomic(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=2)))
        self.records = self._read_journal()

    def _read_journal(self) -> dict[str, dict]:
        """The last record of each id; a line cut short by a kill is dropped (and cut from the file)."""
        path = self.out / JOURNAL
        if not path.exists():
            return {}
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(raw.rfind(b"\n") + 1)
            raw = raw[:raw.rfind(b"\n") + 1]
        records = {}
        for line in raw.decode().splitlines():
            record = json.loads(line)
            records[record["id"]] = record
        return records

    def done(self, retry_failed: bool) -> set[str]:
        return {i for i, r in self.records.items() if r["status"] == "ok" or not retry_failed}

    def _append(self, record: dict) -> None:
        with open(self.out / JOURNAL, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.records[record["id"]] = record

    def fail(self, item, error: str) -> None:
        self._append({**_ids(item), "status": "failed", "error": error})

    def write(self, item, feats: dict[int, torch.Tensor], spans: list[tuple[int, int]], fps: float) -> None:
        """feats: layer -> [windows, ...] on the CPU, in the stored dtype."""
        files = {}
        if self.format == "safetensors":
            from safetensors.torch import save_file

            name = f"{item.id}.safetensors"
            starts, ends = (torch.tensor([s[k] for s in spans], dtype=torch.int64) for k in (0, 1))
            tensors = {f"layer{layer}": f.contiguous() for layer, f in feats.items()}
            tensors.update(start_frame=starts, end_frame=ends, start_s=starts.double() / fps, end_s=ends.double() / fps)
            _atomic(self.files / name, lambda tmp: save_file(tensors, str(tmp)))
            files = {layer: (name, f"layer{layer}") for layer in feats}
        else:
            for layer, f in feats.items():
                name = f"{item.id}.npy" if self.format == "actionformer" else f"{item.id}.layer{layer}.npy"
                _save_npy(self.files / name, f.numpy())
                files[layer] = (name, None)
        self._append({**_ids(item), "status": "ok", "fps": fps, "spans": [list(s) for s in spans],
                      "dtype": str(next(iter(feats.values())).dtype).removeprefix("torch."),
                      "layers": {str(layer): {"file": f"{FILES}/{files[layer][0]}", "tensor": files[layer][1],
                                              "shape": list(feats[layer].shape)} for layer in feats}})

    def write_index(self) -> Path:
        rows = []
        for r in self.records.values():
            base = {k: r.get(k) for k in ("id", "clip_id", "video_id", "source", "status", "error")}
            if r["status"] != "ok":
                rows.append(base)
                continue
            fps = r["fps"]
            for layer, entry in r["layers"].items():
                for w, (start, end) in enumerate(r["spans"]):
                    rows.append({**base, "layer": int(layer), "window_index": w, "start_frame": start, "end_frame": end,
                                 "start_s": start / fps, "end_s": end / fps, "fps": fps, "file": entry["file"],
                                 "tensor": entry["tensor"], "shape": entry["shape"][1:],
                                 "dtype": r["dtype"]})
        table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
        path = self.out / INDEX
        _atomic(path, lambda tmp: pq.write_table(table, tmp))
        return path


def _ids(item) -> dict:
    return {"id": item.id, "clip_id": item.clip_id, "video_id": item.video_id, "source": item.source}


INDEX_SCHEMA = pa.schema([
    ("id", pa.string()), ("clip_id", pa.string()), ("video_id", pa.string()), ("source", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("layer", pa.int64()), ("window_index", pa.int64()),
    ("start_frame", pa.int64()), ("end_frame", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("fps", pa.float64()), ("file", pa.string()), ("tensor", pa.string()),
    ("shape", pa.list_(pa.int64())), ("dtype", pa.string())])
