"""faiss index choice and the clustering rules of dedup, on vectors with planted near-duplicates."""
import numpy as np
import pytest

from ivdata.curate.ann import IndexConfig, build_index, gpu_available, resolved_kind, similar_pairs
from ivdata.curate.dedup import ClipFacts, default_priority, near_duplicates, sha256_duplicates, source_id_duplicates


def planted_vectors(n=3000, d=64, pairs=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = rng.choice(n, 2 * pairs, replace=False)
    a, b = idx[:pairs], idx[pairs:]
    noise = rng.standard_normal((pairs, d)).astype(np.float32)
    x[b] = x[a] + 0.15 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    x[b] /= np.linalg.norm(x[b], axis=1, keepdims=True)
    return x, {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist())}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_every_index_finds_the_planted_pairs(kind):
    x, truth = planted_vectors()
    found = {(i, j) for i, j, _ in similar_pairs(x, 0.9, k=4, cfg=IndexConfig(kind=kind, nlist=16, nprobe=8))}
    assert found == truth, (kind, len(found & truth), len(truth))


def test_auto_picks_flat_small_ivf_large_and_gpu_is_explicit():
    cfg = IndexConfig(flat_max=1000)
    assert resolved_kind(1000, cfg) == "flat" and resolved_kind(1001, cfg) == "ivf"
    x, _ = planted_vectors(n=2000)
    idx = build_index(x, IndexConfig(flat_max=1000, nlist=8))
    assert type(idx).__name__ == "IndexIVFFlat" and idx.ntotal == 2000 and idx.nprobe == 8
    if not gpu_available():
        with pytest.raises(RuntimeError, match="faiss-gpu"):
            build_index(x[:10], IndexConfig(kind="flat", gpu=True))
    with pytest.raises(ValueError):
        IndexConfig(kind="lsh")


def test_near_dup_clusters_are_components_with_the_best_clip_kept():
    # a ~ b ~ c form a chain (a and c below the threshold to each other); d stands alone.
    e = np.zeros((4, 3), np.float32)
    e[0] = [1, 0, 0]
    e[1] = [np.cos(0.35), np.sin(0.35), 0]
    e[2] = [np.cos(0.7), np.sin(0.7), 0]
    e[3] = [0, 0, 1]
    clips = [ClipFacts("a", "va", "k400", width=320, height=240, duration_s=5),
             ClipFacts("b", "vb", "web", width=1280, height=720, duration_s=5),
             ClipFacts("c", "vc", "web", width=320, height=240, duration_s=9),
             ClipFacts("d", "vd", "web", width=320, height=240, duration_s=5)]
    dec, pairs = near_duplicates(clips, e, 0.9, default_priority())
    d = {x.clip_id: x for x in dec}
    assert {(i, j) for i, j, _ in pairs} == {(0, 1), (1, 2)}
    assert d["b"].kept and not d["a"].kept and not d["c"].kept and d["d"].kept     # b has the most pixels
    assert d["a"].matched_clip_id == d["c"].matched_clip_id == "b" and d["a"].cluster_id == "near_dup:b"
    assert abs(d["a"].similarity - np.cos(0.35)) < 1e-5 and d["d"].cluster_id is None


def test_exact_groups_keep_one_video():
    clips = [ClipFacts("k1", "vk", "k400", source_key="youtube:X", video_sha256="h1", sha256="c1", start_s=0),
             ClipFacts("k2", "vk", "k400", source_key="youtube:X", video_sha256="h1", sha256="c2", start_s=10),
             ClipFacts("a1", "va", "anet", source_key="youtube:X", video_sha256="h2", sha256="c3", start_s=9),
             ClipFacts("w1", "vw", "web", video_sha256="h1", sha256="c1", start_s=0),
             ClipFacts("z1", "vz", "web", video_sha256="h9", sha256="c2", start_s=0)]
    prio = default_priority(["k400", "anet", "web"])
    by_id = {x.clip_id: x for x in source_id_duplicates(clips, prio)}
    assert by_id["k1"].kept and by_id["k2"].kept and not by_id["a1"].kept
    assert by_id["a1"].matched_clip_id == "k2"          # the kept video's clip nearest in time
    sha = {x.clip_id: x for x in sha256_duplicates(clips, prio)}
    assert not sha["w1"].kept and sha["w1"].matched_clip_id == "k1"    # same video bytes as vk
    assert not sha["z1"].kept and sha["z1"].matched_clip_id == "k2"    # same clip bytes as k2
    assert sha["k1"].kept and sha["k2"].kept and sha["a1"].kept
