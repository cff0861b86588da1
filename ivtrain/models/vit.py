"""The InternVideo2 video ViT.

Pre-norm transformer blocks with RMSNorm, QK-norm taken over the full width (not per head),
LayerScale on both residual branches, a Conv3d patch embedding (tubelet 1 for the student),
a 3D position table with a CLS slot (sin-cos initialized, trained as released), and an
attention-pooling head whose query is the mean token. Module names follow the released
checkpoints so that key maps in ivtrain.convert stay a prefix change.

Two details of the released weights that no tensor shape reveals, so they are config keys:
the attention-pooling head has 16 heads in every released size (not the blocks' count), and the
MLP's GELU is the tanh approximation (the fused MLP the release trained with).
"""
from __future__ import annotations

import math
from typing import NamedTuple
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.utils.checkpoint as activation_checkpoint

from ivtrain.config import ViTConfig
from ivtrain.models.attention import attention, resolve_backend
from ivtrain.models.flops import patch_embed_flops, transformer_flops

# The released sizes pool with 16 heads and use the tanh GELU (see the module docstring). `tiny` is ivkit's
# own test size: 4 pooling heads of 16 channels, exact GELU.
_RELEASED = dict(img_size=224, patch_size=14, num_frames=8, pool_heads=16, mlp_act="gelu_tanh")
PRESETS = {
    "tiny": dict(img_size=32, patch_size=8, num_frames=4, embed_dim=64, depth=4, num_heads=4, mlp_dim=128,
                 pool_heads=4, mlp_act="gelu"),
    "b": dict(_RELEASED, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "l": dict(_RELEASED, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096),
    "1b": dict(_RELEASED, embed_dim=1408, depth=40, num_heads=16, mlp_dim=6144),
    "6b": dict(_RELEASED, embed_dim=3200, depth=48, num_heads=25, mlp_dim=12800),
}


def resolve_vit(cfg: ViTConfig) -> ViTConfig:
    """Fill the fields left at 0 from the size preset."""
    if cfg.size not in PRESETS:
        raise ValueError(f"unknown ViT size {cfg.size!r} (known: {', '.join(PRESETS)})")
    preset = PRESETS[cfg.size]
    filled = {k: (getattr(cfg, k) or v) for k, v in preset.items()}
    out = replace(cfg, **filled)
    for what, heads in (("num_heads", out.num_heads), ("pool_heads", out.pool_heads)):
        if out.embed_dim % heads:
            raise ValueError(f"embed_dim {out.embed_dim} is not divisible by {what} {heads}")
    return out


# ------------------------------------------------------------------ position embedding

def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int, cls_token: bool = True) -> torch.Tensor:
    """3D sin-cos table in the released channel order: the first quarter of the channels encodes time, the
    next three eighths the column (w), the last three eighths the row (h).

    Returns (1 + T*H*W, dim), tokens in (t, h, w) order, with a zero row for the CLS token first.
    """
    if dim % 8:
        raise ValueError(f"a 3D sin-cos table needs a width divisible by 8, got {dim}")
    temporal_dim, spatial_dim = dim // 4, dim // 4 * 3
    hh, ww = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    spatial = np.concatenate([_sincos_1d(spatial_dim // 2, ww), _sincos_1d(spatial_dim // 2, hh)], axis=1)  # (HW, ds)
    temporal = _sincos_1d(temporal_dim, np.arange(grid_t, dtype=np.float64))  # (T, dt)
    emb = np.concatenate([np.repeat(temporal[:, None], grid_h * grid_w, axis=1),
                          np.repeat(spatial[None], grid_t, axis=0)], axis=-1).reshape(-1, dim)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


# ------------------------------------------------------------------ layers

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalize in fp32 so bf16 activations do not lose the scale
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, backend: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_norm = RMSNorm(dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)  # over the full width, before the head split
        q, k, v = (t.reshape(b, n, self.num_heads, c // self.num_heads) for t in (q, k, v))
        out = attention(q, k, v, self.backend)
        return self.proj(out.reshape(b, n, c))


GELU_APPROXIMATION = {"gelu": "none", "gelu_tanh": "tanh"}


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=GELU_APPROXIMATION[act])
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qk_norm: bool, layerscale_init: float,
                 drop_path: float, backend: str, mlp_act: str = "gelu"):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm, backend)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = RMSNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, act=mlp_act)
        self.ls2 = LayerScale(dim, layerscale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class CrossAttention(nn.Module):
    """Multi-head cross attention with separate q/k/v projections (biases kept apart, as released)."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor, return_attention: bool = False):
        """-> (B, Nq, out_dim); with return_attention also the attention weights averaged over heads
        (B, Nq, Nk), which a teacher's pooling head hands out to guide masking."""
        b, nq, c = xq.shape
        h = self.num_heads
        q = nn.functional.linear(xq, self.q.weight, self.q_bias).reshape(b, nq, h, c // h)
        k = nn.functional.linear(xk, self.k.weight, self.k_bias).reshape(b, xk.shape[1], h, c // h)
        v = nn.functional.linear(xv, self.v.weight, self.v_bias).reshape(b, xv.shape[1], h, c // h)
        if not return_attention:
            out = attention(q, k, v, "sdpa")  # one query token: the kernel choice does not matter
            return self.proj(out.reshape(b, nq, c))
        # fused kernels return no weights: spell the softmax out (in fp32, so bf16 teachers give exact weights)
        weights = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()).mul((c // h) ** -0.5).softmax(-1)
        out = torch.einsum("bhqk,bkhd->bqhd", weights.to(v.dtype), v)
        return self.proj(out.reshape(b, nq, c)), weights.mean(1)


class AttentionPooling(nn.Module):
    """Pool tokens into one vector: the mean token queries all tokens; q, k, v get their own LayerNorm."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_v = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attn = CrossAttention(dim, num_heads, out_dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(B, N, dim) -> (B, out_dim); with return_attention also the query's attention to each token,
        averaged over heads (B, N)."""
        query = x.mean(1, keepdim=True)
        out = self.cross_attn(self.norm1_q(query), self.norm1_k(x), self.norm1_v(x), return_attention)
        if not return_attention:
            return out.squeeze(1)
        pooled, weights = out
        return pooled.squeeze(1), weights.squeeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, tubelet: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, T'*H'*W', dim)
        return self.proj(x).flatten(2).transpose(1, 2)


# ------------------------------------------------------------------ the encoder

class EncoderOutput(NamedTuple):
    """A NamedTuple, not a dataclass: ZeRO-3 finds the tensors a module returns (to gather its sharded
    weights again for backward) only inside tuples, lists and dicts."""
    tokens: torch.Tensor            # (B, 1 + N_visible, dim): CLS first
    pooled: torch.Tensor            # (B, pool_out_dim)
    layers: dict[int, torch.Tensor]  # block index -> (B, 1 + N_visible, dim), for the requested indices


class InternVideo2(nn.Module):
    """InternVideo2 video encoder; `forward(video, visible)` runs only the visible tokens."""

    def __init__(self, cfg: ViTConfig, pool_out_dim: int | None = None, device: torch.device | None = None):
        super().__init__()
        cfg = resolve_vit(cfg)
        self.cfg = cfg
        device = device or torch.device("cpu")
        self.backend = resolve_backend(cfg.attn_backend, device)
        d = cfg.embed_dim
        self.grid = (cfg.num_frames // cfg.tubelet_size, cfg.img_size // cfg.patch_size, cfg.img_size // cfg.patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.tubelet_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        # sin-cos initialized and trained, as released (model.train_pos_embed=false keeps it fixed)
        self.pos_embed = nn.Parameter(sincos_3d(d, *self.grid).unsqueeze(0), requires_grad=cfg.train_pos_embed)
        rates = [cfg.drop_path * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_dim, cfg.qk_norm, cfg.layerscale_init, rates[i], self.backend, cfg.mlp_act)
            for i in range(cfg.depth))
        self.clip_projector = AttentionPooling(d, cfg.pool_heads, pool_out_dim or d)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for i, blk in enumerate(self.blocks):  # depth-scaled init of the residual outputs
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * (i + 1)))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def set_backend(self, backend: str) -> None:
        for blk in self.blocks:
            blk.attn.backend = backend
        self.backend = backend

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 1 + N, dim) with position embedding added."""
        x = self.patch_embed(video.to(self.patch_embed.proj.weight.dtype))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed.to(x.dtype)

    def forward(self, video: torch.Tensor, visible: torch.Tensor | None = None,
                return_layers: tuple[int, ...] = ()) -> EncoderOutput:
        """visible: (B, N) bool, the same count per row; None keeps every token."""
        x = self.embed(video)
        if visible is not None:
            b, _, c = x.shape
            keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), visible], dim=1)
            x = x[keep].reshape(b, -1, c)
        layers = {}
        for i, blk in enumerate(self.blocks):
            if self.cfg.checkpoint_activations and self.training and torch.is_grad_enabled():
                x = activation_checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in return_layers:
                layers[i] = x
        return EncoderOutput(tokens=x, pooled=self.clip_projector(x), layers=layers)

    def flops_per_sample(self, num_tokens: int | None = None) -> float:
        """Forward FLOPs for one clip (2 per multiply-add) at `num_tokens` tokens (+ CLS)."""
        n = (num_tokens if num_tokens is not None else self.num_patches) + 1
        d = self.cfg.embed_dim
        blocks = transformer_flops(n, d, self.cfg.mlp_dim, self.depth)
        embed = patch_embed_flops(self.num_patches, self.cfg.patch_size, self.cfg.tubelet_size, d)
        # attention pooling: k, v over every token, one query, one output projection
        pool = 2 * n * 2 * d * d + 2 * 2 * n * d + 2 * d * d + 2 * d * self.clip_projector.cross_attn.proj.out_features
        return float(blocks + embed + pool)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
