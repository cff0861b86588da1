"""The frozen image teacher of InternVideo-Next's stage 1: a SigLIP or SigLIP2 vision tower from a local
transformers directory, run per frame the way the release runs its SigLIP2 teacher.

- Frames come normalized with the data's mean and std; they are converted to the teacher's normalization (its
  preprocessor_config.json, else SigLIP's 0.5 / 0.5) and resized bicubically to the teacher's resolution: its own
  image size for SigLIP, or for SigLIP2's any-resolution towers the student's grid at the teacher's patch. The
  teacher's token grid must equal the student's, so that one mask serves both (224 px at patch 14 and 256 px at
  patch 16 are both 16 x 16).
- Layer targets are the INPUTS of layers depth-1 - int(k * interval), k < count (the release taps the hidden state
  entering each chosen layer), in layer order; SigLIP has no CLS token, so these are patch tokens only.
- The pooled target is the attention-pooling (MAP) head's output, L2-normalized per frame and averaged over frames.
- The head's attention from its probe to the patches, averaged over heads, is the map that guides the mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.models.flops import patch_embed_flops, transformer_flops
from ivtrain.models.patches import patchify
from ivtrain.models.teachers import InputNormalization, _freeze, saved_normalization

SIGLIP_NORM = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
SIGLIP_TYPES = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model")


def teacher_layers(depth: int, count: int, interval: float) -> tuple[int, ...]:
    """The layers whose inputs are the targets: depth-1 - int(k * interval) for k < count, in layer order."""
    index = sorted({depth - 1 - int(k * interval) for k in range(count)})
    if len(index) != count or index[0] < 0:
        raise ValueError(f"cannot tap {count} layers {interval} apart from a teacher of {depth} layers")
    return tuple(index)


@dataclass
class NextTargets:
    layers: torch.Tensor         # (K, B, T, P, C): the inputs of the tapped layers, per frame
    pooled: torch.Tensor         # (B, C): the MAP head's output, L2-normalized per frame, averaged over frames
    attention: torch.Tensor      # (B, T, P): the MAP head's attention to each patch, averaged over heads


class SiglipTeacher(nn.Module):
    def __init__(self, path: str | Path, count: int, interval: float = 1.0,
                 data_norm: tuple[list[float], list[float]] | None = None):
        super().__init__()
        import transformers
        from transformers import AutoConfig

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"teacher directory {path} does not exist")
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in SIGLIP_TYPES:
            raise ValueError(f"teacher directory {path} is a {config.model_type!r} model, not a SigLIP / SigLIP2 "
                             "vision tower")
        arch = (getattr(config, "architectures", None) or [None])[0]
        model = getattr(transformers, arch or "", None) or transformers.AutoModel
        tower = model.from_pretrained(path)
        while hasattr(tower, "vision_model"):   # a two-tower model, or a transformers 4.x vision wrapper
            tower = tower.vision_model
        vc = getattr(config, "vision_config", config)
        if getattr(tower, "head", None) is None:
            raise ValueError(f"teacher directory {path}: the vision tower has no attention-pooling head "
                             "(vision_use_head false): its attention guides the mask")
        self.tower = _freeze(tower)
        self.naflex = config.model_type.startswith("siglip2")
        self.patch_size, self.hidden_size, self.depth = vc.patch_size, vc.hidden_size, vc.num_hidden_layers
        self.mlp_size = vc.intermediate_size
        self.image_size = None if self.naflex else vc.image_size   # SigLIP2 takes any grid
        self.pooled_dim = vc.hidden_size
        self.layer_index = teacher_layers(self.depth, count, interval)
        self.input_norm = InputNormalization(data_norm, saved_normalization(path) or SIGLIP_NORM)

    def size_for(self, grid: int) -> int:
        """The side, in pixels, the teacher runs at for a student grid of `grid` x `grid` tokens."""
        size = self.image_size or grid * self.patch_size
        if size // self.patch_size != grid:
            raise ValueError(f"the teacher's grid ({size} px at patch {self.patch_size}: {size // self.patch_size} x "
                             f"{size // self.patch_size}) differs from the student's {grid} x {grid}")
        return size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def run_tower(self, images: torch.Tensor):
        if not self.naflex:
            return self.tower(pixel_values=images, output_hidden_states=True)
        n, _, h, w = images.shape
        patches = patchify(images.unsqueeze(2), self.patch_size, order="thwc")   # (N, P, p * p * 3), row-major
        shapes = torch.tensor([[h // self.patch_size, w // self.patch_size]] * n, device=images.device)
        mask = torch.ones(patches.shape[:2], dtype=torch.long, device=images.device)
        return self.tower(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes,
                          output_hidden_states=True)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, grid: int) -> NextTargets:
        """frames (B, 3, T, H, W), normalized with the data's mean and std; grid: the student's tokens per side."""
        b, c, t, h, w = frames.shape
        size = self.size_for(grid)
        images = self.input_norm(frames).transpose(1, 2).reshape(b * t, c, h, w)
        if (h, w) != (size, size):
            images = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
        out = self.run_tower(images.to(self.dtype))
        layers = torch.stack([out.hidden_states[i] for i in self.layer_index])   # (K, BT, P, C)
        head, last = self.tower.head, out.last_hidden_state                        # after the post-LayerNorm
        probe = head.probe.expand(last.shape[0], -1, -1)
        pooled, attention = head.attention(probe, last, last, need_weights=True, average_attn_weights=True)
        pooled = (pooled + head.mlp(head.layernorm(pooled)))[:, 0]              # the head's output (pooler_output)
        k, _, p, ch = layers.shape
        return NextTargets(layers=layers.reshape(k, b, t, p, ch).float(),
                           pooled=F.normalize(pooled.float(), dim=-1).reshape(b, t, -1).mean(1),
                           attention=attention.float().reshape(b, t, p))

    def flops_per_sample(self, frames: int, grid: int) -> float:
        """Forward FLOPs of `frames` images on the student's grid: patch embedding, the blocks, the MAP head."""
        patches, d = grid * grid, self.hidden_size
        head = 2 * patches * 2 * d * d + 4 * patches * d + 2 * d * d + 2 * 2 * d * self.mlp_size
        return frames * (patch_embed_flops(patches, self.patch_size, 1, d)
                         + transformer_flops(patches, d, self.mlp_size, self.depth) + head)
