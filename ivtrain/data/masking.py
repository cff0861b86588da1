"""Token masks for the student. A mask is a (B, T*P) bool tensor of *visible* tokens, with the
same number of visible tokens in every row (the student drops the others).

- attention: per frame, sample the visible patches without replacement with probability
  proportional to the semantic teacher's CLS attention (sampling, not top-k, so low-attention
  regions are still seen sometimes).
- tube: one random set of patches, visible in every frame.
- random: a uniformly random set of tokens over the whole clip.

Each draws its randomness from uniform noise that is either given (per clip, from the loader's clip seeds:
the same mask for a clip wherever it is trained) or drawn from the global torch RNG.
"""
from __future__ import annotations

import torch


def visible_per_frame(num_patches: int, ratio: float) -> int:
    """Patches left visible per frame when `ratio` of them are hidden (at least one): the hidden count is rounded
    down, as released (256 patches at 0.8 keep 52 visible, not round(51.2) = 51)."""
    return max(1, num_patches - int(num_patches * ratio))


def _scatter_visible(index: torch.Tensor, size: int) -> torch.Tensor:
    visible = torch.zeros(*index.shape[:-1], size, dtype=torch.bool, device=index.device)
    return visible.scatter_(-1, index, True)


def clip_generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one clip's draws of one kind: stream 0 (the mask) is seeded with the clip's seed itself,
    any other stream (e.g. diffusion noise) with the seed mixed with the stream number, so that the kinds do not
    share their random numbers."""
    if stream:
        seed = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9) % 2**63
    return torch.Generator().manual_seed(seed)


def clip_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform noise in (0, 1) of `shape` for each clip, drawn on the CPU from that clip's own seed: a clip's mask
    is then the same whichever rank, batch or device it lands on (the engine's resume across world sizes
    relies on this, and a CPU run masks exactly as a CUDA run)."""
    noise = torch.empty(len(seeds), *shape)
    for row, seed in zip(noise, seeds):
        row.uniform_(generator=clip_generator(seed))
    return noise.clamp_(1e-12, 1 - 1e-7)


def _uniform(shape: tuple[int, ...], noise: torch.Tensor | None, device) -> torch.Tensor:
    if noise is None:
        return torch.rand(shape, device=device).clamp_(1e-12, 1 - 1e-7)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"mask noise has shape {tuple(noise.shape)}, the mask needs {tuple(shape)}")
    return noise.to(device)


def attention_guided_mask(cls_attention: torch.Tensor, ratio: float,
                          noise: torch.Tensor | None = None) -> torch.Tensor:
    """cls_attention: (B, T, P) non-negative weights -> visible (B, T*P); noise: (B, T, P) uniform or None.

    Weighted sampling without replacement as Gumbel-top-k: the k largest log w + Gumbel(u) are distributed as
    k sequential draws in proportion to w (Efraimidis-Spirakis), and they take their randomness from `noise`."""
    b, t, p = cls_attention.shape
    k = visible_per_frame(p, ratio)
    weights = cls_attention.float().clamp_min(0) + 1e-6  # no zero-probability patch
    u = _uniform((b, t, p), noise, weights.device)
    index = (weights.log() - (-u.log()).log()).topk(k, dim=-1).indices
    return _scatter_visible(index, p).reshape(b, t * p)


def tube_mask(batch: int, frames: int, patches: int, ratio: float, device: torch.device | str = "cpu",
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """noise: (B, P) uniform or None."""
    k = visible_per_frame(patches, ratio)
    index = _uniform((batch, patches), noise, device).argsort(-1)[:, :k]
    return _scatter_visible(index, patches)[:, None, :].expand(batch, frames, patches).reshape(batch, -1)


def random_mask(batch: int, frames: int, patches: int, ratio: float, device: torch.device | str = "cpu",
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """noise: (B, T*P) uniform or None."""
    k = visible_per_frame(patches, ratio) * frames
    index = _uniform((batch, frames * patches), noise, device).argsort(-1)[:, :k]
    return _scatter_visible(index, frames * patches)


NOISE_SHAPE = {"attention": lambda t, p: (t, p), "tube": lambda t, p: (p,), "random": lambda t, p: (t * p,)}


def make_mask(kind: str, ratio: float, batch: int, frames: int, patches: int,
              cls_attention: torch.Tensor | None = None, device: torch.device | str = "cpu",
              seeds: list[int] | None = None) -> torch.Tensor:
    """seeds: one per clip (the loader's `clip_seeds`), or None to draw from the global torch RNG."""
    if kind not in NOISE_SHAPE:
        raise ValueError(f"unknown mask type {kind!r}")
    noise = None if seeds is None else clip_noise(seeds, NOISE_SHAPE[kind](frames, patches))
    if kind == "attention":
        if cls_attention is None:
            raise ValueError("attention-guided masking needs the teacher's CLS attention")
        return attention_guided_mask(cls_attention, ratio, noise)
    if kind == "tube":
        return tube_mask(batch, frames, patches, ratio, device, noise)
    return random_mask(batch, frames, patches, ratio, device, noise)
