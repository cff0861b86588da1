"""The losses of InternVideo2 stage 2, over the global batch, with every random draw taken from the samples' own
seeds (so a resumed run, or one on another number of processes, draws exactly what the uninterrupted run drew).

Each rank holds B rows of the batch (padded to B with `valid` False where its loader skipped samples). A loss over
the global batch is computed for this rank's rows against every rank's columns; its value on a rank is
world x (sum over this rank's valid rows) / (valid rows over all ranks), so that the average over ranks, which the
engine logs and DeepSpeed applies to the gradients, is the mean over the global batch: two processes of two
samples train exactly as one process of four (the columns come through the exact-gradient all-gather).

- VTC (`contrastive`): InfoNCE in both directions, logits = cos / temp; a row's targets are spread evenly over
  the columns of the same source and source id (a clip's other captions, an image's other crops), its own
  included.
- VTM (`matching_weights`, `draw_negatives`): for each text one negative video, and for each video one negative
  text, drawn from the global batch in proportion to softmax(sim) with the positives left out; the fusion
  encoder scores [pos; neg video; neg text] with a 2-way head, labels [1; 0; 0].
- MLM (`mlm_mask`): each non-padding, non-CLS token is masked with probability p; a masked token becomes
  [MASK] 80 % of the time, a random word 10 %, stays 10 % (as released: [SEP] may be masked, as there).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100   # label of a token that is not predicted


def same_identity(rows: list, cols: list) -> torch.Tensor:
    """(R, C) bool: row i and column j name the same (source, source id)."""
    lookup: dict = {}
    r = torch.tensor([lookup.setdefault(x, len(lookup)) for x in rows])
    c = torch.tensor([lookup.setdefault(x, len(lookup)) for x in cols])
    return r[:, None] == c[None, :]


def global_mean(local_sum: torch.Tensor, local_count: int, dist) -> torch.Tensor:
    """This rank's share of a mean over the global batch (module docstring): world x local sum / global count."""
    total = dist.sum({"n": float(local_count)})["n"] if dist.world > 1 else float(local_count)
    return local_sum * (dist.world / max(total, 1.0))


def wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 activations are scored in float32; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def info_nce(logits: torch.Tensor, positives: torch.Tensor, valid_cols: torch.Tensor) -> torch.Tensor:
    """(R,) -sum_j target_ij log softmax_j(logits_i) over the valid columns; targets spread over the positives."""
    logits = wide(logits).masked_fill(~valid_cols[None, :], float("-inf"))
    targets = (positives & valid_cols[None, :]).to(logits.dtype)
    targets = targets / targets.sum(1, keepdim=True).clamp_min(1.0)
    log_p = F.log_softmax(logits, dim=1).masked_fill(~valid_cols[None, :], 0.0)
    return -(targets * log_p).sum(1)


def contrastive(v: torch.Tensor, t: torch.Tensor, v_all: torch.Tensor, t_all: torch.Tensor, temp: torch.Tensor,
                positives: torch.Tensor, valid: torch.Tensor, valid_all: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum over this rank's valid rows of (v->t + t->v) / 2, number of valid rows). v, t: (B, D) this rank's
    projections; v_all, t_all: (G, D) every rank's; positives: (B, G) bool; valid (B,), valid_all (G,)."""
    v, t = F.normalize(wide(v), dim=-1), F.normalize(wide(t), dim=-1)
    v_all, t_all = F.normalize(wide(v_all), dim=-1), F.normalize(wide(t_all), dim=-1)
    v2t = info_nce(v @ t_all.T / temp, positives, valid_all)
    t2v = info_nce(t @ v_all.T / temp, positives, valid_all)
    per_row = (v2t + t2v) / 2
    return per_row[valid].sum(), int(valid.sum())


def matching_weights(sim: torch.Tensor, positives: torch.Tensor, valid_all: torch.Tensor) -> torch.Tensor:
    """(R, C) sampling weights of negatives: softmax of the similarity row, zero on positives and padding."""
    weights = F.softmax(sim.float(), dim=1)
    return weights.masked_fill(positives | ~valid_all[None, :], 0.0)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: 64 well-mixed bits of any 64 bits."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def pair_uniform(row_seeds: list[int], col_seeds: list[int], salt: int) -> torch.Tensor:
    """(R, C) uniform numbers in (0, 1), each a function of (row sample, column sample, salt) alone: a draw over the
    global batch does not depend on the order the ranks lay the columns out in."""
    with np.errstate(over="ignore"):
        rows = _mix(np.asarray(row_seeds, dtype=np.uint64) ^ np.uint64(salt))
        z = _mix(rows[:, None] ^ _mix(np.asarray(col_seeds, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))[None])
    return torch.from_numpy(((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53)


def draw_negatives(weights: torch.Tensor, row_seeds: list[int], col_seeds: list[int], salt: int) -> torch.Tensor:
    """(R,) one column per row drawn in proportion to `weights` (Gumbel-max over the seeded uniforms); -1 where
    a row has no column of positive weight (every sample of the batch is its positive)."""
    gumbel = -torch.log(-torch.log(pair_uniform(row_seeds, col_seeds, salt)))
    scores = weights.double().log().cpu() + gumbel
    choice = scores.argmax(1)
    return torch.where((weights > 0).any(1).cpu(), choice, torch.full_like(choice, -1)).to(weights.device)


def matching_labels(rows: int, device=None) -> torch.Tensor:
    """[1] * rows (positive pairs), then [0] * 2 rows (negative videos, then negative texts)."""
    return torch.cat([torch.ones(rows, dtype=torch.long, device=device),
                      torch.zeros(2 * rows, dtype=torch.long, device=device)])


def mlm_mask(ids: torch.Tensor, seed: int, prob: float, never: tuple[int, ...], mask_id: int,
             vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, labels) of one caption: masking drawn from the caption's own seed (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    ids = ids.cpu()
    draw = torch.rand((4, *ids.shape), generator=g)
    masked = draw[0] < prob
    for token in never:
        masked &= ids != token
    replaced = masked & (draw[1] < 0.8)
    randomized = masked & ~replaced & (draw[2] < 0.5)
    words = torch.randint(vocab, ids.shape, generator=g)
    out = torch.where(replaced, torch.full_like(ids, mask_id), torch.where(randomized, words, ids))
    return out, torch.where(masked, ids, torch.full_like(ids, IGNORE))
