"""Forward FLOP counts (2 per multiply-add) that the student and both teachers share; MFU divides by them.
tests/test_train_model.py and tests/test_train_objective.py check the sums against torch.utils.flop_counter."""
from __future__ import annotations


def transformer_flops(tokens: int, dim: int, mlp: int, depth: int) -> float:
    """`depth` pre-norm blocks: qkv + output projection, the MLP, and attention's two (tokens x tokens) matmuls."""
    return float(depth * (2 * tokens * (4 * dim * dim + 2 * dim * mlp) + 4 * tokens * tokens * dim))


def patch_embed_flops(patches: int, patch_size: int, tubelet: int, dim: int) -> float:
    """A (tubelet x p x p) convolution over 3 channels, once per patch (tubelet 1: an image tower)."""
    return float(2 * patches * 3 * tubelet * patch_size ** 2 * dim)
