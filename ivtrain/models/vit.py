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

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as activation_checkpoint

from ivtrain.models.attention import resolve_backend
from ivtrain.models.flops import patch_embed_flops, transformer_flops
from ivtrain.models.layers import AttentionPooling, Block, PatchEmbed
from ivtrain.models.pos_embed import sincos_3d


@dataclass
class ViTConfig:
    size: str = "tiny"               # tiny | b | l | 1b | 6b ; fields below that are set override the preset
    img_size: int = 0
    patch_size: int = 0
    num_frames: int = 0
    tubelet_size: int = 1
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    mlp_dim: int = 0
    pool_heads: int = 0              # attention-pooling heads (16 in every released size, whatever num_heads is)
    mlp_act: Literal["", "gelu", "gelu_tanh"] = ""   # "": the preset's (released sizes: gelu_tanh, as trained)
    train_pos_embed: bool = True     # position tables are trained (sin-cos start, no weight decay), as released
    image_pos_embed: bool = False    # a separate table for one-frame inputs (images), as the released stage 2
    cls_tokens: int = 1              # learned tokens before the patches (InternVideo-Next: 4), zero rows in the table
    patch_norm: bool = False         # RMSNorm over each flattened patch before the projection and over the
                                     # embedding after it (InternVideo-Next's "dual norm" patch embedding)
    qk_norm: bool = True
    layerscale_init: float = 0.1
    drop_path: float = 0.0
    attn_backend: Literal["auto", "sdpa", "flash"] = "auto"
    checkpoint_activations: bool = False

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
    if out.cls_tokens < 1:
        raise ValueError(f"cls_tokens must be at least 1, got {out.cls_tokens}")
    for what, heads in (("num_heads", out.num_heads), ("pool_heads", out.pool_heads)):
        if out.embed_dim % heads:
            raise ValueError(f"embed_dim {out.embed_dim} is not divisible by {what} {heads}")
    return out


# ------------------------------------------------------------------ the encoder

class EncoderOutput(NamedTuple):
    """A NamedTuple, not a dataclass: ZeRO-3 finds the tensors a module returns (to gather its sharded
    weights again for backward) only inside tuples, lists and dicts."""
    tokens: torch.Tensor            # (B, cls + N_visible, dim): the CLS token(s) first
    pooled: torch.Tensor            # (B, pool_out_dim)
    layers: dict[int, torch.Tensor]  # block index -> (B, cls + N_visible, dim), for the requested indices


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
        self.num_cls = cfg.cls_tokens
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.tubelet_size, d, cfg.patch_norm)
        self.cls_token = nn.Parameter(torch.zeros(1, self.num_cls, d))
        # sin-cos initialized and trained, as released (model.train_pos_embed=false keeps it fixed)
        self.pos_embed = nn.Parameter(sincos_3d(d, *self.grid, cls_token=self.num_cls).unsqueeze(0),
                                      requires_grad=cfg.train_pos_embed)
        if cfg.image_pos_embed:   # images (one frame) get a table of their own, sin-cos initialized at T = 1
            self.img_pos_embed = nn.Parameter(sincos_3d(d, 1, *self.grid[1:], cls_token=self.num_cls).unsqueeze(0),
                                              requires_grad=cfg.train_pos_embed)
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

    def position_table(self, frames: int) -> torch.Tensor:
        """(1, cls + T'HW, dim) for an input of `frames` temporal tokens: the video table at the tower's own frame
        count; for one frame (an image) the image table, or, without one, the video table averaged over time
        (the released stage 2's two options)."""
        if frames == self.grid[0]:
            return self.pos_embed
        if frames == 1:
            if self.cfg.image_pos_embed:
                return self.img_pos_embed
            t, h, w = self.grid
            spatial = self.pos_embed[:, self.num_cls:].reshape(1, t, h * w, -1).mean(1)
            return torch.cat([self.pos_embed[:, :self.num_cls], spatial], dim=1)
        raise ValueError(f"this tower takes {self.grid[0] * self.cfg.tubelet_size} frames (or one, an image), "
                         f"got {frames * self.cfg.tubelet_size}: load it at that frame count (load_vision_tower "
                         "interpolates its position table)")

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, cls + N, dim) with position embedding added."""
        x = self.patch_embed(video.to(self.patch_embed.proj.weight.dtype))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_table(video.shape[2] // self.cfg.tubelet_size).to(x.dtype)

    def forward(self, video: torch.Tensor, visible: torch.Tensor | None = None,
                return_layers: tuple[int, ...] = ()) -> EncoderOutput:
        """visible: (B, N) bool, the same count per row; None keeps every token."""
        x = self.embed(video)
        if visible is not None:
            b, _, c = x.shape
            keep = torch.cat([torch.ones(b, self.num_cls, dtype=torch.bool, device=x.device), visible], dim=1)
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

    def config(self) -> dict:
        """The resolved configuration and pooled width: what `encoder_from_config` rebuilds this tower from."""
        return {**dataclasses.asdict(self.cfg), "pool_out_dim": self.clip_projector.cross_attn.proj.out_features}

    def flops_per_sample(self, num_tokens: int | None = None) -> float:
        """Forward FLOPs for one clip (2 per multiply-add) at `num_tokens` tokens (+ CLS)."""
        n = (num_tokens if num_tokens is not None else self.num_patches) + self.num_cls
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


def encoder_from_config(config: dict, **overrides) -> InternVideo2:
    """The tower an export's encoder.json describes (InternVideo2.config), e.g. overrides attn_backend="sdpa"."""
    config = dict(config)
    pool_out_dim = config.pop("pool_out_dim")
    known = {f.name for f in dataclasses.fields(ViTConfig)}
    return InternVideo2(ViTConfig(**{k: v for k, v in config.items() if k in known} | overrides),
                        pool_out_dim=pool_out_dim)
