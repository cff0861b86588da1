"""Transformer layers of the InternVideo2 towers (the video encoder, its attention pooling, the probe's head):
pre-norm blocks with RMSNorm, QK-norm over the full width, LayerScale, stochastic depth; cross attention with
separate q/k/v biases; a Conv3d patch embedding. Module names follow the released checkpoints."""
from __future__ import annotations

import torch
import torch.nn as nn

from ivtrain.models.attention import attention
from ivtrain.models.patches import patchify

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
    """A Conv3d over (tubelet, patch, patch) cells. With `norm` (InternVideo-Next's "dual norm"), each flattened
    patch (time, row, column, channel order) is RMS-normalized before the projection, and the embedding after it;
    the projection is then applied as the same kernel laid out over that flattened patch."""

    def __init__(self, patch: int, tubelet: int, dim: int, norm: bool = False):
        super().__init__()
        self.patch, self.tubelet = patch, tubelet
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))
        if norm:
            self.norm_before = RMSNorm(3 * tubelet * patch * patch)
            self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, T'*H'*W', dim)
        if not hasattr(self, "norm"):
            return self.proj(x).flatten(2).transpose(1, 2)
        patches = self.norm_before(patchify(x, self.patch, self.tubelet, order="thwc"))
        kernel = self.proj.weight.permute(0, 2, 3, 4, 1).flatten(1)   # (dim, 3, t, p, p) -> (dim, t * p * p * 3)
        return self.norm(nn.functional.linear(patches, kernel, self.proj.bias))
