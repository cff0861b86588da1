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

import math
from dataclasses import dataclass

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


# --- multi-block masks (V-JEPA; InternVideo-Next stage 2) -------------------------------------------------------
# A view hides the union of `blocks` rectangles of one sampled size (spatial `scale` of a frame, aspect ratio h/w
# uniform in `aspect`), each spanning the whole clip in time; the encoder sees `context` patches per frame left
# uncovered by the blocks, the same places in every frame. Every row of a batch then has the same number of
# visible tokens, and a clip's mask depends on its seed only.


@dataclass(frozen=True)
class BlockView:
    blocks: int                       # rectangles per view
    scale: float                      # each rectangle's area, as a fraction of a frame's patches
    context: float                    # patches per frame the encoder sees, as a fraction (at least one)
    aspect: tuple[float, float] = (0.75, 1.5)


@dataclass
class MultiBlockDraw:
    visible: torch.Tensor             # (T*H*W,) bool: the context, the same places in every frame
    covered: torch.Tensor             # (H, W) bool: the union of the blocks
    boxes: list[tuple[int, int, int, int]]   # (top, left, height, width) of each block
    attempts: int                     # draws until the uncovered area held the context


def context_per_frame(view: BlockView, height: int, width: int) -> int:
    return max(1, int(height * width * view.context))


def block_size(view: BlockView, height: int, width: int, g: torch.Generator) -> tuple[int, int]:
    """(h, w) of a view's blocks, as V-JEPA: area int(H W scale), aspect uniform in the range, sides rounded and
    clipped to the frame."""
    area = int(height * width * view.scale)
    low, high = view.aspect
    aspect = low + float(torch.rand(1, generator=g)) * (high - low)
    h = min(height, max(1, round(math.sqrt(area * aspect))))
    w = min(width, max(1, round(math.sqrt(area / aspect))))
    return h, w


def draw_multiblock(view: BlockView, grid: tuple[int, int, int], g: torch.Generator,
                    max_attempts: int = 1000) -> MultiBlockDraw:
    """One clip's view. A draw whose blocks leave fewer than the context uncovered is redrawn (V-JEPA redraws an
    empty context); `context` of the uncovered patches, chosen uniformly, become visible in every frame."""
    frames, height, width = grid
    keep = context_per_frame(view, height, width)
    for attempt in range(1, max_attempts + 1):
        h, w = block_size(view, height, width, g)
        covered = torch.zeros(height, width, dtype=torch.bool)
        boxes = []
        for _ in range(view.blocks):
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            covered[top:top + h, left:left + w] = True
            boxes.append((top, left, h, w))
        free = (~covered).flatten().nonzero().flatten()
        if len(free) >= keep:
            chosen = free[torch.randperm(len(free), generator=g)[:keep]]
            plane = torch.zeros(height * width, dtype=torch.bool)
            plane[chosen] = True
            return MultiBlockDraw(plane.repeat(frames), covered, boxes, attempt)
    raise ValueError(f"{view.blocks} blocks of scale {view.scale} left fewer than {keep} of {height} x {width} "
                     f"patches uncovered in {max_attempts} draws: lower the view's context")


def multiblock_masks(views: list[BlockView], grid: tuple[int, int, int], seeds: list[int]) -> torch.Tensor:
    """(V, B, T*H*W) visible masks: view v of clip b from the clip's seed, stream v (the same mask in any worker,
    rank or batch)."""
    return torch.stack([torch.stack([draw_multiblock(view, grid, clip_generator(int(seed), v)).visible
                                     for seed in seeds]) for v, view in enumerate(views)])
