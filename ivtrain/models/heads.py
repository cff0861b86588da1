"""Small pieces the distillation objectives share: the MLP head that maps a student's tokens to a target width,
the 2 - 2cos alignment loss, and the FLOPs of a stack of Linear layers."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cosine_distance(pred: torch.Tensor, target: torch.Tensor, normalize_target: bool = True) -> torch.Tensor:
    """Mean of 2 - 2 cos(pred, target) over all leading dims (= squared distance of unit vectors). With
    normalize_target False the target is used as given (2 - 2 <pred / |pred|, target>): a mean of unit vectors
    keeps its length, which weighs the term by how much the averaged directions agree."""
    pred = F.normalize(pred.float(), dim=-1)
    target = F.normalize(target.float(), dim=-1) if normalize_target else target.float()
    return (2.0 - 2.0 * (pred * target).sum(-1)).mean()


def linear_flops(module: nn.Module) -> int:
    """FLOPs (2 per multiply-add) of one token through every Linear layer of `module`."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


class MLPHead(nn.Module):
    """Linear(dim, dim) -> GELU -> Linear(dim, out_dim) -> LayerNorm: InternVideo2's motion heads and
    InternVideo-Next's alignment heads and predictor input projection (the release's MLP_Decoder)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))
        self.norm = nn.LayerNorm(out_dim)
        for m in self.head:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))
