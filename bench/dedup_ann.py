"""Near-duplicate search over N random unit vectors (default 1M x 512): flat vs IVF vs HNSW.

Measures, on this machine: build time, added resident memory, query time, recall@k of each approximate
index against exact (flat) search on a query sample, recall of planted near-duplicate pairs at the dedup
threshold, and the projected time of a whole-corpus self-join (every vector queried once).
Random vectors are the hard case for approximate search (no cluster structure): real clip embeddings
are easier. Appends a markdown table to bench/out/dedup_ann.md (copy the figures into bench/RESULTS.md).

    python bench/dedup_ann.py [--n 1000000] [--dim 512] [--queries 1000] [--skip-hnsw]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import time
from pathlib import Path

import faiss
import numpy as np

from ivdata.curate.ann import IndexConfig, build_index, search


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--planted", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--skip-hnsw", action="store_true")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--train-size", type=int, default=65_536)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "dedup_ann.md"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    rng = np.random.default_rng(0)
    base_rss = rss_mb()
    x = np.empty((args.n, args.dim), dtype=np.float32)
    for i in range(0, args.n, 100_000):  # chunks: no float64 temporaries of the whole set
        x[i:i + 100_000] = rng.standard_normal((min(100_000, args.n - i), args.dim), dtype=np.float32)
    unit(x)
    # Planted near-duplicates: copy j of original i, perturbed to cosine ~0.95 with it.
    idx = rng.choice(args.n, 2 * args.planted, replace=False)
    orig, copy = idx[:args.planted], idx[args.planted:]
    noise = unit(rng.standard_normal((args.planted, args.dim), dtype=np.float32))
    x[copy] = unit(x[orig] + 0.33 * noise)
    planted_sims = np.einsum("ij,ij->i", x[orig], x[copy])
    data_mb = rss_mb() - base_rss
    q_ids = rng.choice(args.n, args.queries, replace=False)
    queries = x[q_ids]
    results = []

    def run(name: str, cfg: IndexConfig, settings: list[tuple[str, callable]], truth=None):
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        index = build_index(x, cfg)
        build_s = time.perf_counter() - t0
        mem = rss_mb() - before
        rows = []
        for label, apply in settings:
            apply(index)
            t0 = time.perf_counter()
            sims, ids = search(index, queries, args.k)
            q_s = time.perf_counter() - t0
            _, pids = search(index, x[orig], 2)
            found = np.mean([copy[i] in pids[i] for i in range(args.planted)])
            rec = None if truth is None else float(np.mean(
                [len(set(ids[i]) & set(truth[i])) / args.k for i in range(args.queries)]))
            rows.append(dict(index=name, setting=label, build_s=round(build_s, 1), mem_mb=round(mem),
                             query_ms=round(1000 * q_s / args.queries, 3),
                             selfjoin_h=round(q_s / args.queries * args.n / 3600, 2),
                             recall_at_k=None if rec is None else round(rec, 4),
                             planted_recall=round(float(found), 4)))
            print(json.dumps(rows[-1]), flush=True)
        del index
        return rows, ids

    flat_rows, truth = run("flat", IndexConfig(kind="flat"), [("exact", lambda i: None)])
    results += flat_rows
    # Flat is the baseline: its recall is 1 by definition.
    results[0]["recall_at_k"] = 1.0
    nlist = args.nlist
    ivf_settings = [(f"nprobe={p}", (lambda p: lambda i: setattr(i, "nprobe", p))(p)) for p in (8, 32, 128)]
    rows, _ = run(f"ivf{nlist}", IndexConfig(kind="ivf", nlist=nlist, train_size=args.train_size), ivf_settings, truth)
    results += rows
    if not args.skip_hnsw:
        hnsw_settings = [(f"efSearch={e}", (lambda e: lambda i: setattr(i.hnsw, "efSearch", e))(e)) for e in (64, 256)]
        rows, _ = run("hnsw32", IndexConfig(kind="hnsw", hnsw_m=32, ef_construction=64), hnsw_settings, truth)
        results += rows
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
    flat_q = results[0]["query_ms"]
    head = f"## Near-dup search, {args.n:,} x {args.dim} (bench/dedup_ann.py)"
    lines = [head, "",
             f"{args.n:,} random unit vectors x {args.dim} (float32, {data_mb:.0f} MB resident), "
             f"{args.planted} planted near-duplicate pairs (cosine {planted_sims.mean():.3f} +- {planted_sims.std():.3f}), "
             f"{args.queries} sampled queries, k={args.k}. Machine: {model}, {faiss.omp_get_max_threads()} threads, "
             f"faiss {faiss.__version__}, Python {platform.python_version()}.", "",
             "| index | setting | build s | added RSS MB | ms/query | speed vs flat | recall@k vs flat | planted-pair recall | projected self-join h |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['index']} | {r['setting']} | {r['build_s']} | {r['mem_mb']} | {r['query_ms']} | "
                     f"{flat_q / r['query_ms']:.1f}x | {r['recall_at_k']} | {r['planted_recall']} | {r['selfjoin_h']} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else "# Curation benchmarks\n\n"
    if head in old:
        pre, _, post = old.partition(head)
        nxt = post.find("\n## ")
        old = pre + (post[nxt + 1:] if nxt >= 0 else "")
    out.write_text(old.rstrip() + "\n\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
