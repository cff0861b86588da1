"""HD input for stage 3: a clip cut into up to N sub-videos of the base resolution, tiled by its aspect ratio, plus
one global view of the whole clip resized to the base resolution (VideoChat2-HD's dynamic tiling, the rule of
InternVL 1.5).

The rule: among the grids of `cols` x `rows` tiles with 1 <= cols x rows <= N (ordered by tile count), take the one
whose aspect ratio (cols / rows) is closest to the clip's (width / height); of grids with an equally close ratio a
later (larger) one wins when the clip's area exceeds half the area of that grid at the base resolution, so a
large square clip is cut into 2 x 2 tiles and a small one stays one tile. The frames are resized (bicubic) to
(rows x base, cols x base) and cut into tiles, row by row; the global view is that resized clip resized to
(base, base). Every view is a clip of the same frames, so each goes through the vision tower as one clip.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def candidate_grids(max_tiles: int, min_tiles: int = 1) -> list[tuple[int, int]]:
    """(cols, rows) grids with min_tiles <= cols x rows <= max_tiles, by tile count (then cols, rows)."""
    grids = {(c, r) for n in range(min_tiles, max_tiles + 1) for c in range(1, n + 1) for r in range(1, n + 1)
             if min_tiles <= c * r <= max_tiles}
    return sorted(grids, key=lambda g: (g[0] * g[1], g))


def choose_grid(width: int, height: int, base: int, max_tiles: int) -> tuple[int, int]:
    """The (cols, rows) grid the rule picks for a width x height clip."""
    if width <= 0 or height <= 0:
        raise ValueError(f"a clip of {width} x {height} pixels has no aspect ratio")
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * base * base * cols * rows:
            best = (cols, rows)
    return best


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of (T, 3, H, W) float frames, as the release resizes them (no antialiasing)."""
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)


def hd_views(frames: np.ndarray, base: int, max_tiles: int, global_view: bool = True
             ) -> tuple[torch.Tensor, tuple[int, int]]:
    """(T, H, W, 3) uint8 frames -> ((V, 3, T, base, base) uint8 views: the tiles row by row, then the global
    view; (cols, rows))."""
    t, h, w, _ = frames.shape
    cols, rows = choose_grid(w, h, base, max_tiles)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()   # (T, 3, H, W)
    big = _resize(x, rows * base, cols * base)
    tiles = big.reshape(t, 3, rows, base, cols, base).permute(2, 4, 1, 0, 3, 5).reshape(rows * cols, 3, t, base, base)
    views = [tiles]
    if global_view:
        views.append(_resize(big, base, base).permute(1, 0, 2, 3)[None])
    out = torch.cat(views).round_().clamp_(0, 255).to(torch.uint8)
    return out.contiguous(), (cols, rows)


def views_per_clip(width: int, height: int, base: int, max_tiles: int, global_view: bool = True) -> int:
    cols, rows = choose_grid(width, height, base, max_tiles)
    return cols * rows + int(global_view)
