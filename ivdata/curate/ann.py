"""Nearest-neighbour search over unit embeddings with faiss: exact for small sets, approximate for large.

Inner product on L2-normalised vectors is cosine similarity. `kind="auto"` picks:
  flat  (exact)                         n <= flat_max
  ivf   (IndexIVFFlat, nlist ~ 4*sqrt(n), trained on a sample; nprobe lists searched)  otherwise
  hnsw  (IndexHNSWFlat) on request: no training, more memory, best recall per query time on CPU.
Flat and IVF move to the GPU when faiss-gpu is installed and sees a GPU (HNSW has no GPU version).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class IndexConfig:
    kind: str = "auto"              # auto | flat | ivf | hnsw
    flat_max: int = 100_000
    nlist: int | None = None        # IVF lists (default ~4*sqrt(n), a power of two)
    nprobe: int = 32
    train_size: int = 131_072       # IVF k-means sample (faiss wants >= 39 points per list)
    hnsw_m: int = 32
    ef_construction: int = 64
    ef_search: int = 128
    gpu: bool | None = None         # None: use a GPU when faiss has one
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"index kind {self.kind!r}: one of auto, flat, ivf, hnsw")


def resolved_kind(n: int, cfg: IndexConfig) -> str:
    return cfg.kind if cfg.kind != "auto" else ("flat" if n <= cfg.flat_max else "ivf")


def gpu_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def build_index(x: np.ndarray, cfg: IndexConfig | None = None) -> faiss.Index:
    cfg = cfg or IndexConfig()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    kind = resolved_kind(n, cfg)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    else:
        nlist = cfg.nlist or max(1, min(2 ** round(math.log2(4 * math.sqrt(n))), n // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(cfg.seed)
        sample = x if n <= cfg.train_size else x[np.sort(rng.choice(n, cfg.train_size, replace=False))]
        index.cp.seed = cfg.seed
        index.train(sample)
        index.nprobe = min(cfg.nprobe, nlist)
    use_gpu = gpu_available() if cfg.gpu is None else cfg.gpu
    if use_gpu and kind != "hnsw":
        if not gpu_available():
            raise RuntimeError("gpu=True but faiss sees no GPU (install faiss-gpu on a CUDA machine)")
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k nearest stored vectors per query; id -1 where fewer exist."""
    k = max(1, min(k, index.ntotal))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def similar_pairs(x: np.ndarray, threshold: float, k: int = 16, cfg: IndexConfig | None = None
                  ) -> list[tuple[int, int, float]]:
    """Every pair (i < j) among the rows of x whose cosine similarity is >= threshold.

    Each vector asks for its k nearest neighbours: a near-duplicate group larger than k is still found
    whole through its chain of pairs (clusters are taken as connected components).
    """
    if len(x) < 2:
        return []
    index = build_index(x, cfg)
    sims, ids = search(index, x, k + 1)
    pairs: dict[tuple[int, int], float] = {}
    for i in range(len(x)):
        for s, j in zip(sims[i], ids[i]):
            if j < 0 or j == i or s < threshold:
                continue
            a, b = (i, int(j)) if i < j else (int(j), i)
            pairs[(a, b)] = max(pairs.get((a, b), -1.0), float(s))
    return sorted((a, b, s) for (a, b), s in pairs.items())
