"""Clip embeddings beside the manifest: .npy parts under <corpus root>/embeddings/<model>/.

A batch of embeddings is written to a temporary name and renamed, then the manifest's `embeddings`
table points each clip at (file, row). A crash between the two leaves an orphan part, never a pointer
to a missing or partial file; the clip is simply embedded again on the next run.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ivdata.manifest import Manifest, utcnow


def model_slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")[:80] or "model"


def write_part(root: Path, model: str, clip_ids: list[str], emb: np.ndarray, tag: str) -> list[dict]:
    """Write one part file; return the `embeddings` rows that point at it."""
    if len(clip_ids) != len(emb):
        raise ValueError("one embedding per clip")
    rel = Path("embeddings") / model_slug(model) / f"part-{tag}.npy"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, np.asarray(emb, dtype=np.float32))
    os.replace(tmp, path)
    now = utcnow()
    return [{"clip_id": c, "model": model, "file": rel.as_posix(), "row_index": i, "dim": int(emb.shape[1]),
             "created_at": now} for i, c in enumerate(clip_ids)]


def load_embeddings(m: Manifest, root: Path, model: str, clip_ids: list[str] | None = None
                    ) -> tuple[list[str], np.ndarray]:
    """(clip_ids, matrix) for every clip embedded with `model` (or just the given ones, in that order)."""
    rows = m.rows("SELECT clip_id, file, row_index, dim FROM embeddings WHERE model = ? ORDER BY clip_id", [model])
    if clip_ids is not None:
        want = set(clip_ids)
        rows = [r for r in rows if r["clip_id"] in want]
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    dims = {r["dim"] for r in rows}
    if len(dims) != 1:
        raise ValueError(f"embeddings of {model} have several dims {sorted(dims)}")
    out = np.empty((len(rows), dims.pop()), dtype=np.float32)
    by_file: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_file[r["file"]].append((i, r["row_index"]))
    for f, pos in by_file.items():
        part = np.load(root / f, mmap_mode="r")
        dst, src = zip(*pos)
        out[list(dst)] = part[list(src)]
    ids = [r["clip_id"] for r in rows]
    if clip_ids is not None:
        order = {c: i for i, c in enumerate(ids)}
        missing = [c for c in clip_ids if c not in order]
        if missing:
            raise KeyError(f"{len(missing)} clips have no {model} embedding, e.g. {missing[:3]}")
        sel = [order[c] for c in clip_ids]
        return list(clip_ids), out[sel]
    return ids, out
