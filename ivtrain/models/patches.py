"""Clips as sequences of patches and back. A clip (B, 3, T, H, W) on a (T/tubelet, H/p, W/p) grid becomes
(B, N, 3 * tubelet * p * p): one row per token, tokens in (t, h, w) order, the order of the video towers' patch
embedding (Conv3d output flattened) and of their position tables, whatever the input size.

Within a patch two orders are used: "thwc" (time, row, column, channel) is what InternVideo-Next's normalized
patch embedding flattens, "cthw" (channel first) is pixel_unshuffle's, the layout of its reconstruction target."""
from __future__ import annotations

import torch



def patch_grid(video_shape, patch: int, tubelet: int = 1) -> tuple[int, int, int]:
    """The token grid (T', H', W') of a clip shape (..., 3, T, H, W)."""
    t, h, w = video_shape[-3:]
    if t % tubelet or h % patch or w % patch:
        raise ValueError(f"a {t}x{h}x{w} clip does not split into {tubelet}x{patch}x{patch} patches")
    return t // tubelet, h // patch, w // patch


def patchify(video: torch.Tensor, patch: int, tubelet: int = 1, order: str = "cthw") -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, T'H'W', 3 * tubelet * patch * patch)."""
    b, c = video.shape[:2]
    gt, gh, gw = patch_grid(video.shape, patch, tubelet)
    x = video.reshape(b, c, gt, tubelet, gh, patch, gw, patch)
    if order == "thwc":    # (b, gt, gh, gw, tubelet, p, p, c)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    elif order == "cthw":  # (b, gt, gh, gw, c, tubelet, p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    else:
        raise ValueError(f"unknown patch order {order!r} (thwc | cthw)")
    return x.reshape(b, gt * gh * gw, -1)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], patch: int, tubelet: int = 1,
               order: str = "cthw") -> torch.Tensor:
    """The inverse of patchify: (B, T'H'W', 3 * tubelet * patch * patch) -> (B, 3, T, H, W)."""
    b = patches.shape[0]
    gt, gh, gw = grid
    if order == "cthw":
        x = patches.reshape(b, gt, gh, gw, 3, tubelet, patch, patch).permute(0, 4, 1, 5, 2, 6, 3, 7)
    elif order == "thwc":
        x = patches.reshape(b, gt, gh, gw, tubelet, patch, patch, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)
    else:
        raise ValueError(f"unknown patch order {order!r} (thwc | cthw)")
    return x.reshape(b, 3, gt * tubelet, gh * patch, gw * patch)
