"""Attention backends: flash-attn on CUDA when it imports, otherwise PyTorch SDPA.

Both take q, k, v laid out as (batch, tokens, heads, head_dim) and return the same layout,
so a model's weights and results do not depend on which backend ran (within dtype tolerance).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=1)
def flash_attn_func():
    """The flash-attn kernel, or None when the package does not import (always on CPU)."""
    try:
        from flash_attn import flash_attn_func as fn  # type: ignore
    except Exception:  # ImportError, or a build made for another CUDA/torch
        return None
    return fn


def resolve_backend(requested: str, device: torch.device) -> str:
    """Pick the backend for `requested` in {auto, sdpa, flash} on `device`."""
    if requested not in ("auto", "sdpa", "flash"):
        raise ValueError(f"unknown attention backend {requested!r}")
    flash_ok = device.type == "cuda" and flash_attn_func() is not None
    if requested == "flash" and not flash_ok:
        raise RuntimeError("attention backend 'flash' needs CUDA and an importable flash_attn package")
    if requested == "auto":
        return "flash" if flash_ok else "sdpa"
    return requested


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa",
              window: int | None = None) -> torch.Tensor:
    """Softmax attention, no dropout. q, k, v: (B, N, H, D) -> (B, N, H, D). `window`: each token attends only to
    the tokens at most that many positions away on either side (a bidirectional sliding window); None: to all."""
    n = q.shape[1]
    if window is not None and window >= max(n, k.shape[1]) - 1:
        window = None   # the window covers the whole sequence
    if backend == "flash":
        fn = flash_attn_func()
        # flash-attn only runs fp16/bf16; compute in bf16 when handed fp32 and return the input dtype.
        dtype = q.dtype
        if dtype not in (torch.float16, torch.bfloat16):
            q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        sides = (window, window) if window is not None else (-1, -1)
        return fn(q, k, v, dropout_p=0.0, causal=False, window_size=sides).to(dtype)
    mask = None
    if window is not None:
        queries, keys = torch.arange(n, device=q.device), torch.arange(k.shape[1], device=q.device)
        mask = (queries[:, None] - keys[None, :]).abs() <= window
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
