"""InternVL-C's vision tower InternViT-6B (3200 wide, 48 blocks, 25 heads, MLP 12800, patch 14 at 224 px, RMSNorm,
QK-norm over the full width, LayerScale, a learned position table with a CLS slot) and its attention-pooling head
`clip_projector` (16 heads, out 768), as the semantic teacher of InternVideo2 stage 1.

That is ivkit's own InternVideo2 tower (ivtrain.models.vit) with one frame and tubelet 1, under the same parameter
names, so the conversion keeps the vision keys (a Conv2d patch kernel gains its time axis) and reports the text
tower's as unused. The directory holds `model.safetensors` and `teacher.json` (the architecture and InternVL's
input normalization); `InternViTSemanticTeacher` (backend `internvit`) runs it as the release did: last-K block
outputs per frame, the pooling head's head-averaged attention from its mean-token query to the patch tokens as the
map that guides masking, the pooling head's output as the pooled target.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ivtrain.convert import ConversionError, compare
from ivtrain.models.released_teachers import (IMAGENET_MEAN, IMAGENET_STD, TEACHER_CONFIG, WEIGHTS, Converted,
                                              expected_shapes)
from ivtrain.models.teachers import InputNormalization, SemanticTeacher, _freeze
from ivtrain.models.vit import InternVideo2, ViTConfig


@dataclass(frozen=True)
class InternViTArch:
    """InternVL-C's vision tower and pooling head; the defaults are the released InternViT-6B at 224 px."""
    image_size: int = 224
    patch_size: int = 14
    dim: int = 3200
    depth: int = 48
    heads: int = 25
    mlp_dim: int = 12800
    pool_heads: int = 16
    pool_out_dim: int = 768
    mlp_act: str = "gelu_tanh"   # the release ran the fused MLP, whose GELU is the tanh approximation
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def build(self) -> InternVideo2:
        """The tower as an InternVideo2 of one frame, tubelet 1 (on the current default device)."""
        # every field the size preset would fill is set, so the preset named does not matter
        cfg = ViTConfig(size="6b", img_size=self.image_size, patch_size=self.patch_size, num_frames=1,
                        tubelet_size=1, embed_dim=self.dim, depth=self.depth, num_heads=self.heads,
                        mlp_dim=self.mlp_dim, pool_heads=self.pool_heads, mlp_act=self.mlp_act,
                        train_pos_embed=False, attn_backend="sdpa")
        return InternVideo2(cfg, pool_out_dim=self.pool_out_dim)

    def write_config(self, directory: Path, source: Path) -> None:
        config = {"backend": "internvit", "converted_from": source.name, **asdict(self)}
        (directory / TEACHER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


INTERNVIT_ROOTS = ("patch_embed.", "pos_embed", "cls_token", "blocks.", "clip_projector.")


def convert_internvl_c(sd: dict[str, torch.Tensor], arch: InternViTArch = InternViTArch()) -> Converted:
    """Released InternVL-C state dict -> ivkit InternVideo2 names (vision tower + pooling head)."""
    vision = {k: v for k, v in sd.items() if k.startswith(INTERNVIT_ROOTS)}
    unused = sorted(k for k in sd if k not in vision)
    kernel = vision.get("patch_embed.proj.weight")
    if kernel is not None and kernel.dim() == 4:  # InternViT's Conv2d kernel -> a Conv3d kernel of depth 1
        vision["patch_embed.proj.weight"] = kernel.unsqueeze(2)
    report = compare(vision, expected_shapes(arch))
    report.unused = unused
    return Converted(vision, report, arch)


def read_internvit_dir(path: Path) -> InternViTArch:
    config = path / TEACHER_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{path} has no {TEACHER_CONFIG}: not a teacher directory written by "
                                "`iv convert-teacher --kind internvl-c`")
    raw = json.loads(config.read_text())
    known = {f.name for f in fields(InternViTArch)}
    arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
    return InternViTArch(**arch)


class InternViTSemanticTeacher(SemanticTeacher):
    """A converted InternVL-C vision tower, run per frame as InternVideo2's stage 1 ran it: last-K block outputs,
    the pooling head's output as the pooled feature, and the pooling head's attention from its mean-token query
    to the patch tokens (averaged over heads) as the map that guides masking."""

    def __init__(self, path: str | Path, num_layers: int, data_norm=None):
        super().__init__()
        from safetensors.torch import load_file

        path = Path(path)
        arch = read_internvit_dir(path)
        with torch.device("meta"):  # no memory for a random init: the weights are assigned below
            encoder = arch.build()
        weights = load_file(str(path / WEIGHTS))
        report = compare(weights, {k: v.shape for k, v in encoder.state_dict().items()})
        if not report.ok:
            raise ConversionError(f"{path / WEIGHTS} does not fit {TEACHER_CONFIG}:\n{report}")
        encoder.load_state_dict(weights, strict=True, assign=True)
        self.encoder = _freeze(encoder)
        self.image_size, self.patch_size = arch.image_size, arch.patch_size
        self.hidden_size, self.depth, self.mlp_size = arch.dim, arch.depth, arch.mlp_dim
        self._check_layers(num_layers)
        self.has_cls = True
        self.pooled_dim = arch.pool_out_dim
        self.input_norm = InputNormalization(data_norm, (list(arch.image_mean), list(arch.image_std)))

    def encode_images(self, images):
        x = self.encoder.embed(images.unsqueeze(2))  # (N, 1 + P, C): one frame each
        first = self.depth - self.num_layers
        layers = []
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i >= first:
                layers.append(x)
        pooled, attention = self.encoder.clip_projector(x, return_attention=True)  # attention: (N, 1 + P)
        return torch.stack(layers), attention[:, 1:], pooled

    def flops_per_sample(self, frames: int) -> float:
        return frames * self.encoder.flops_per_sample()  # blocks, patch embedding and the pooling head
