"""Token masks for the student. A mask is a (B, T*P) bool tensor of *visible* tokens, with the
same number of visible tokens in every row (the student drops the others).

- attention: per frame, sample the visible patches without replacement with probability
  proportional to the semantic teacher's CLS attention (sampling, not top-k, so low-attention
  regions are still seen sometimes).
- tube: one random set of patches, visible in every frame.
- random: a uniformly random set of tokens over the whole clip.
"""
from __future__ import annotations

import torch


def visible_per_frame(num_patches: int, ratio: float) -> int:
    """Patches left visible per frame when `ratio` of them are hidden (at least one)."""
    return max(1, int(round(num_patches * (1.0 - ratio))))


def _scatter_visible(index: torch.Tensor, size: int) -> torch.Tensor:
    visible = torch.zeros(*index.shape[:-1], size, dtype=torch.bool, device=index.device)
    return visible.scatter_(-1, index, True)


def attention_guided_mask(cls_attention: torch.Tensor, ratio: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """cls_attention: (B, T, P) non-negative weights -> visible (B, T*P)."""
    b, t, p = cls_attention.shape
    k = visible_per_frame(p, ratio)
    weights = cls_attention.float().reshape(b * t, p).clamp_min(0) + 1e-6  # no zero-probability patch
    index = torch.multinomial(weights, k, replacement=False, generator=generator)
    return _scatter_visible(index, p).reshape(b, t * p)


def tube_mask(batch: int, frames: int, patches: int, ratio: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    k = visible_per_frame(patches, ratio)
    index = torch.rand(batch, patches, generator=generator, device=device).argsort(-1)[:, :k]
    return _scatter_visible(index, patches)[:, None, :].expand(batch, frames, patches).reshape(batch, -1)


def random_mask(batch: int, frames: int, patches: int, ratio: float, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> torch.Tensor:
    k = visible_per_frame(patches, ratio) * frames
    index = torch.rand(batch, frames * patches, generator=generator, device=device).argsort(-1)[:, :k]
    return _scatter_visible(index, frames * patches)


def make_mask(kind: str, ratio: float, batch: int, frames: int, patches: int,
              cls_attention: torch.Tensor | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    if kind == "attention":
        if cls_attention is None:
            raise ValueError("attention-guided masking needs the teacher's CLS attention")
        return attention_guided_mask(cls_attention, ratio)
    if kind == "tube":
        return tube_mask(batch, frames, patches, ratio, device)
    if kind == "random":
        return random_mask(batch, frames, patches, ratio, device)
    raise ValueError(f"unknown mask type {kind!r}")
