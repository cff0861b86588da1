"""Position tables of the video towers: the released 3D sin-cos initialization, and resizing a trained table to
another frame count or resolution (a checkpoint trained at 8 frames of 224 px loaded at 16 frames, or at 1 frame:
an image tower), the way the released code does it: linear in time, bicubic in space, the CLS row kept."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int, cls_token: bool | int = True) -> torch.Tensor:
    """3D sin-cos table in the released channel order: the first quarter of the channels encodes time, the
    next three eighths the column (w), the last three eighths the row (h).

    Returns (cls + T*H*W, dim), tokens in (t, h, w) order, with a zero row for each CLS token first
    (cls_token: True for one, or how many).
    """
    if dim % 4 or (dim // 4) % 2 or (dim // 4 * 3 // 2) % 2:
        raise ValueError(f"a 3D sin-cos table splits its width into sin/cos halves of three parts: {dim} does not "
                         "split evenly (a multiple of 16 does)")
    temporal_dim, spatial_dim = dim // 4, dim // 4 * 3
    hh, ww = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    spatial = np.concatenate([_sincos_1d(spatial_dim // 2, ww), _sincos_1d(spatial_dim // 2, hh)], axis=1)  # (HW, ds)
    temporal = _sincos_1d(temporal_dim, np.arange(grid_t, dtype=np.float64))  # (T, dt)
    emb = np.concatenate([np.repeat(temporal[:, None], grid_h * grid_w, axis=1),
                          np.repeat(spatial[None], grid_t, axis=0)], axis=-1).reshape(-1, dim)
    if cls_token:
        emb = np.concatenate([np.zeros((int(cls_token), dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def resize_pos_table(table: torch.Tensor, source: tuple[int, int, int], target: tuple[int, int, int],
                     num_cls: int = 1) -> torch.Tensor:
    """(1, cls + T*H*W, C) on the `source` grid (T, H, W) -> (1, cls + T'*H'*W', C) on `target`. Time is resized by
    linear interpolation (half-pixel centres: align_corners False), then each frame's (H, W) plane bicubically
    (align_corners False), as the released interpolate_pos_embed does; the `num_cls` CLS rows are kept."""
    (t, h, w), (nt, nh, nw) = source, target
    cls, tokens = table[:, :num_cls], table[:, num_cls:]
    c = tokens.shape[-1]
    if tokens.shape[1] != t * h * w:
        raise ValueError(f"a position table of {tokens.shape[1]} tokens is not on a {t}x{h}x{w} grid")
    x = tokens.reshape(t, h * w, c).float()
    if nt != t:
        x = F.interpolate(x.permute(1, 2, 0), size=nt, mode="linear", align_corners=False).permute(2, 0, 1)
    if (nh, nw) != (h, w):
        planes = x.reshape(nt, h, w, c).permute(0, 3, 1, 2)
        x = F.interpolate(planes, size=(nh, nw), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    return torch.cat([cls, x.reshape(1, nt * nh * nw, c).to(table.dtype)], dim=1)
