"""Stage 2's losses on fixed tensors against their formulas written out here: VTC with repeated source ids (and
padded rows left out), VTM's negative sampling distribution and labels, MLM's masking proportions; and VTC over two
processes, whose gradient (averaged over ranks as DeepSpeed does) equals one process's over the whole batch."""
import math
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from ivtrain.engine.distributed import DistContext
from ivtrain.objectives.iv2_stage2_losses import (IGNORE, contrastive, draw_negatives, global_mean, matching_labels,
                                                  matching_weights, mlm_mask, pair_uniform, same_identity)

IDS = [("k", "a"), ("k", "b"), ("k", "a"), ("w", "c"), ("k", "b"), ("w", "d")]   # a and b twice


def vtc_by_formula(v, t, ids, temp):
    """mean over rows of (v->t + t->v) / 2, logits cos/temp, targets uniform over the rows of the same id."""
    v = v / v.norm(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    s = v @ t.T / temp
    total = 0.0
    for i in range(len(ids)):
        same = [j for j in range(len(ids)) if ids[j] == ids[i]]
        log_v2t = s[i] - torch.logsumexp(s[i], 0)
        log_t2v = s[:, i] - torch.logsumexp(s[:, i], 0)
        v2t = -sum(log_v2t[j] for j in same) / len(same)
        t2v = -sum(log_t2v[j] for j in same) / len(same)
        total += (v2t + t2v) / 2
    return total / len(ids)


def test_vtc_equals_its_formula_with_repeated_source_ids_and_ignores_padding():
    torch.manual_seed(0)
    v, t = torch.randn(6, 5), torch.randn(6, 5)
    temp = torch.tensor([0.1])
    want = vtc_by_formula(v, t, IDS, 0.1)
    valid = torch.ones(6, dtype=torch.bool)
    total, count = contrastive(v, t, v, t, temp, same_identity(IDS, IDS), valid, valid)
    torch.testing.assert_close(total / count, want, rtol=1e-6, atol=1e-6)
    # a padded row (a skipped sample) changes nothing: its row and its column are left out
    vp, tp = torch.cat([v, torch.randn(1, 5)]), torch.cat([t, torch.randn(1, 5)])
    validp = torch.tensor([True] * 6 + [False])
    ids = IDS + [None]
    total, count = contrastive(vp, tp, vp, tp, temp, same_identity(ids, ids) & validp[:, None], validp, validp)
    assert count == 6
    torch.testing.assert_close(total / count, want, rtol=1e-6, atol=1e-6)
    # repeated ids matter: with every sample its own id the loss differs
    unique = [(i, i) for i in range(6)]
    total, _ = contrastive(v, t, v, t, temp, same_identity(unique, unique), valid, valid)
    assert abs(float(total / 6) - float(want)) > 1e-3


def test_vtm_draws_negatives_in_proportion_to_softmax_similarity_without_positives():
    sim = torch.tensor([[2.0, 1.0, 0.5, -1.0, 2.5]])
    positives = torch.tensor([[True, False, False, False, True]])     # itself and a caption of the same clip
    valid_all = torch.tensor([True, True, True, True, True])
    weights = matching_weights(sim, positives, valid_all)
    e = torch.exp(sim[0])
    want = torch.where(positives[0], torch.zeros(5), e / e.sum())
    torch.testing.assert_close(weights[0], want)
    draws = 20000
    col_seeds = [11, 22, 33, 44, 55]
    picks = torch.cat([draw_negatives(weights, [seed], col_seeds, salt=1) for seed in range(draws)])
    freq = torch.bincount(picks, minlength=5).double() / draws
    p = want.double() / want.sum()
    assert freq[0] == 0 and freq[4] == 0
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / draws), (freq, p)
    # a draw depends on which samples the columns are, not on their order (ranks lay the global batch out in
    # another order than one process does)
    order = [3, 0, 4, 2, 1]
    for seed in range(50):
        a = draw_negatives(weights, [seed], col_seeds, salt=1).item()
        b = draw_negatives(weights[:, order], [seed], [col_seeds[i] for i in order], salt=1).item()
        assert order[b] == a
    # a row whose every column is a positive has no negative
    assert draw_negatives(torch.zeros(1, 5), [1], col_seeds, salt=1).item() == -1
    u = pair_uniform([1, 2], col_seeds, 5)
    assert u.shape == (2, 5) and 0 < u.min() and u.max() < 1 and len(set(u.flatten().tolist())) == 10


def test_vtm_labels_are_positives_then_two_kinds_of_negatives():
    assert matching_labels(3).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_mlm_masking_proportions_follow_bert():
    pad, cls, sep, mask_id, vocab = 0, 2, 3, 4, 150
    torch.manual_seed(0)
    captions, inputs, labels = [], [], []
    for i in range(400):
        n = 5 + i % 20
        ids = torch.cat([torch.tensor([cls]), torch.randint(5, vocab, (n,)), torch.tensor([sep]),
                         torch.full((30 - n - 2,), pad)])
        x, y = mlm_mask(ids, seed=1000 + i, prob=0.5, never=(pad, cls), mask_id=mask_id, vocab=vocab)
        captions.append(ids)
        inputs.append(x)
        labels.append(y)
    ids, x, y = torch.stack(captions), torch.stack(inputs), torch.stack(labels)
    maskable = (ids != pad) & (ids != cls)
    masked = y != IGNORE
    assert not masked[~maskable].any() and (x[~maskable] == ids[~maskable]).all()   # pad and CLS stay
    assert (y[masked] == ids[masked]).all()                                         # labels: the original token
    share = masked.sum() / maskable.sum()
    assert abs(share - 0.5) < 0.02, share
    to_mask = (x[masked] == mask_id).float().mean()
    unchanged = (x[masked] == ids[masked]).float().mean()
    assert abs(to_mask - 0.8) < 0.02 and abs(unchanged - (0.1 + 0.1 / vocab)) < 0.015, (to_mask, unchanged)
    again = mlm_mask(captions[7], seed=1007, prob=0.5, never=(pad, cls), mask_id=mask_id, vocab=vocab)
    assert torch.equal(again[0], x[7]) and torch.equal(again[1], y[7])           # the caption's seed decides


# ---------------------------------------------------------------- two processes
WORLD, ROWS, DIM = 2, 4, 6


def vtc_step(rank: int, world: int, valid_rows: list[bool]) -> dict[str, torch.Tensor]:
    """One VTC loss over this rank's rows of a fixed batch of WORLD x ROWS, through a shared projection and
    temperature; returns the gradients averaged over ranks (what DeepSpeed applies). In float64, so that the
    comparison sees the gradient's formula rather than float32 rounding (the temperature's gradient is ~100)."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    feats_v, feats_t = torch.randn(WORLD * ROWS, 8), torch.randn(WORLD * ROWS, 8)
    ids = [("s", i % 3) for i in range(WORLD * ROWS)]                    # ids repeat across ranks
    proj = torch.nn.Linear(8, DIM)
    temp = torch.nn.Parameter(torch.tensor([0.07]))
    torch.set_default_dtype(torch.float32)
    dist = DistContext(rank=rank, world=world)
    n = WORLD * ROWS // world
    rows = slice(rank * n, (rank + 1) * n)
    valid_all = torch.tensor(valid_rows)
    valid = valid_all[rows]
    v, t = proj(feats_v[rows]), proj(feats_t[rows]) * 0.5
    ids_all = [x if ok else None for x, ok in zip(ids, valid_rows)]
    positives = same_identity(ids_all[rows], ids_all) & valid[:, None]
    total, count = contrastive(v, t, dist.all_gather(v), dist.all_gather(t), temp, positives, valid, valid_all)
    loss = global_mean(total, count, dist)
    loss.backward()
    grads = {"weight": proj.weight.grad, "bias": proj.bias.grad, "temp": temp.grad}
    if world > 1:
        for g in grads.values():
            torch.distributed.all_reduce(g)
            g /= world
    return grads


def _rank(rank: int, init_file: str, valid_rows: list[bool], out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    grads = vtc_step(rank, WORLD, valid_rows)
    if rank == 0:
        torch.save(grads, out)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("valid_rows", [[True] * 8, [True] * 7 + [False]], ids=["full", "one_skipped"])
def test_two_process_vtc_gradient_equals_one_process_over_the_global_batch(tmp_path, valid_rows):
    single = vtc_step(0, 1, valid_rows)
    out = tmp_path / "grads.pt"
    init = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_rank, args=(init, valid_rows, str(out)), nprocs=WORLD, join=True)
    double = torch.load(out, weights_only=True)
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=0, atol=1e-6, msg=name)
    assert single["weight"].abs().max() > 1e-3
