"""Frozen teachers for distillation, loaded from local directories.

- A semantic teacher: an image tower run on every student frame. It yields the last-K layer
  features, a pooled feature and the CLS attention map that guides masking. Two backends:
  transformers (CLIP / SigLIP vision models, or a full two-tower model) and open_clip (a
  `local-dir:` export, see ivkit.open_clip_tower).
- MotionTeacher: a VideoMAE (V2-style, tubelet 2) video model run on all teacher frames. It yields
  the last-K layer features on the same (T/2, H/p, W/p) grid as the student.

Teachers never get gradients, run in eval mode, and are cast to bf16 on CUDA. Each takes frames
normalized with the data config's mean and std (`ivtrain.data.transforms.normalize`) and converts them
to its own normalization (CLIP's mean/std differ from ImageNet's) when its directory says what that is.
"""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ivtrain.models.flops import patch_embed_flops, transformer_flops


def teacher_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def saved_normalization(path: Path) -> tuple[list[float], list[float]] | None:
    """(mean, std) from a transformers preprocessor_config.json, when the directory has one."""
    cfg = path / "preprocessor_config.json"
    if not cfg.is_file():
        return None
    raw = json.loads(cfg.read_text())
    if "image_mean" not in raw or "image_std" not in raw:
        return None
    return list(raw["image_mean"]), list(raw["image_std"])


class InputNormalization(nn.Module):
    """x (normalized with the data's mean/std) -> x normalized with the teacher's: x * scale + shift."""

    def __init__(self, data: tuple[list[float], list[float]] | None, teacher: tuple[list[float], list[float]] | None):
        super().__init__()
        self.identity = data is None or teacher is None or (list(data[0]), list(data[1])) == (list(teacher[0]), list(teacher[1]))
        scale, shift = torch.ones(3), torch.zeros(3)
        if not self.identity:
            (dm, ds), (tm, ts) = (torch.tensor(v, dtype=torch.float32) for v in data), \
                (torch.tensor(v, dtype=torch.float32) for v in teacher)
            scale, shift = ds / ts, (dm - tm) / ts
        # plain attributes, not buffers: a teacher moved to bf16 would round them (~0.4 % off every pixel)
        self.scale, self.shift = scale.view(1, 3, 1, 1, 1), shift.view(1, 3, 1, 1, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W)
        if self.identity:
            return video
        if self.scale.device != video.device:
            self.scale, self.shift = self.scale.to(video.device), self.shift.to(video.device)
        return video.float() * self.scale + self.shift


@dataclass
class SemanticTargets:
    layers: torch.Tensor      # (K, B, T, 1 + P, C): last-K layer features, CLS first, per frame
    pooled: torch.Tensor      # (B, C_pool): pooled feature averaged over frames
    cls_attention: torch.Tensor  # (B, T, P): last-layer attention from CLS to each patch, averaged over heads


class SemanticTeacher(nn.Module, abc.ABC):
    """What every image-tower backend provides; subclasses fill the geometry and `encode_images`."""

    image_size: int
    patch_size: int
    hidden_size: int
    depth: int
    mlp_size: int
    num_layers: int
    has_cls: bool
    pooled_dim: int

    def _check_layers(self, num_layers: int) -> None:
        if not 1 <= num_layers <= self.depth:
            raise ValueError(f"semantic teacher has {self.depth} layers, asked to tap {num_layers}")
        self.num_layers = num_layers

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) -> last-K layers (K, N, tokens, C), CLS attention (N, P), pooled (N, C_pool)."""

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> SemanticTargets:
        """frames: (B, 3, T, H, W), normalized with the data config's mean and std."""
        b, c, t, h, w = frames.shape
        frames = self.input_norm(frames)
        images = frames.transpose(1, 2).reshape(b * t, c, h, w).to(self.dtype)
        layers, cls_attention, pooled = self.encode_images(images)
        if not self.has_cls:  # give CLS-free towers a CLS slot: the mean token
            layers = torch.cat([layers.mean(2, keepdim=True), layers], dim=2)
        k, _, n, ch = layers.shape
        return SemanticTargets(layers=layers.reshape(k, b, t, n, ch).float(),
                               pooled=pooled.float().reshape(b, t, -1).mean(1),
                               cls_attention=cls_attention.float().reshape(b, t, -1))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def flops_per_sample(self, frames: int) -> float:
        patches = (self.image_size // self.patch_size) ** 2
        embed = patch_embed_flops(patches, self.patch_size, 1, self.hidden_size)
        return frames * (embed + transformer_flops(patches + int(self.has_cls), self.hidden_size, self.mlp_size,
                                                   self.depth))


class HFSemanticTeacher(SemanticTeacher):
    """A transformers image tower (CLIPVisionModel[WithProjection], SiglipVisionModel, or a full CLIP/SigLIP model)."""

    def __init__(self, path: Path, num_layers: int, data_norm=None):
        super().__init__()
        import transformers
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path)
        # load the saved architecture itself (AutoModel would drop e.g. CLIP's visual projection)
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_cls = getattr(transformers, arch, None) if arch else None
        model_cls = model_cls or AutoModel
        # eager attention is the only implementation that returns attention probabilities (needed for masking)
        model = model_cls.from_pretrained(path, attn_implementation="eager")
        self.projection = None
        if hasattr(model, "vision_model") and not hasattr(model, "embeddings"):
            # a full two-tower model: keep the image tower (and its projection when it has one)
            self.projection = getattr(model, "visual_projection", None)
            model = model.vision_model
            config = getattr(config, "vision_config", config)
        if hasattr(model, "visual_projection"):
            self.projection = model.visual_projection
            model = model.vision_model
        self.model = _freeze(model)
        if self.projection is not None:
            _freeze(self.projection)
        vc = getattr(config, "vision_config", config)
        self.image_size, self.patch_size = vc.image_size, vc.patch_size
        self.hidden_size, self.depth = vc.hidden_size, vc.num_hidden_layers
        self.mlp_size = vc.intermediate_size
        self._check_layers(num_layers)
        # CLIP-style towers prepend a CLS token; SigLIP-style ones do not
        self.has_cls = hasattr(self.model.embeddings, "class_embedding")
        self.input_norm = InputNormalization(data_norm, saved_normalization(path))
        with torch.no_grad():
            probe = torch.zeros(1, self.hidden_size)
            self.pooled_dim = (self.projection(probe) if self.projection is not None else probe).shape[-1]

    def encode_images(self, images):
        out = self.model(pixel_values=images, output_hidden_states=True, output_attentions=True)
        layers = torch.stack(out.hidden_states[-self.num_layers:])  # the outputs of the last K blocks
        attn = out.attentions[-1].float().mean(1)  # (N, tokens, tokens)
        cls_attention = attn[:, 0, 1:] if self.has_cls else attn.mean(1)
        pooled = out.pooler_output
        return layers, cls_attention, self.projection(pooled) if self.projection is not None else pooled


class OpenClipSemanticTeacher(SemanticTeacher):
    """The image tower of an open_clip ViT (a `local-dir:` export): last-K block outputs through
    `forward_intermediates`, the projected pooled feature, and the last block's CLS attention,
    recomputed from that block's normalized input (open_clip runs attention without weights)."""

    def __init__(self, path: Path, num_layers: int, data_norm=None):
        super().__init__()
        from ivkit.open_clip_tower import load_open_clip

        _, model, _, preprocess = load_open_clip(path)
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
            raise ValueError(f"{path}: the open_clip backend takes ViT image towers (got {type(visual).__name__})")
        last = visual.transformer.resblocks[-1]
        if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention):
            raise ValueError(f"{path}: the last block's attention is {type(getattr(last, 'attn', None)).__name__}, "
                             "not nn.MultiheadAttention; its CLS attention map cannot be read")
        self.visual = _freeze(visual)
        size, patch = visual.image_size, visual.patch_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        self.patch_size = patch[0] if isinstance(patch, (tuple, list)) else patch
        self.hidden_size, self.depth = visual.transformer.width, visual.transformer.layers
        self.mlp_size = last.mlp.c_fc.out_features
        self._check_layers(num_layers)
        self.has_cls = True
        self.pooled_dim = visual.output_dim
        mean, std = preprocess.get("mean"), preprocess.get("std")
        self.input_norm = InputNormalization(data_norm, (mean, std) if mean and std else None)
        self._last_block_input = None
        last.ln_1.register_forward_hook(self._keep_last_block_input)

    def _keep_last_block_input(self, module, inputs, output):
        self._last_block_input = output

    def encode_images(self, images):
        out = self.visual.forward_intermediates(images, indices=self.num_layers, output_fmt="NLC",
                                                output_extra_tokens=True)
        layers = torch.stack([torch.cat([cls, tokens], dim=1) for cls, tokens in
                              zip(out["image_intermediates_prefix"], out["image_intermediates"])])
        x = self._last_block_input  # the last block's ln_1 output, in the layout its attention takes
        _, weights = self.visual.transformer.resblocks[-1].attn(x, x, x, need_weights=True,
                                                                average_attn_weights=True)  # (N, L, L)
        return layers, weights[:, 0, 1:], out["image_features"]


def load_semantic_teacher(path: str | Path, num_layers: int, backend: str = "transformers",
                          data_norm: tuple[list[float], list[float]] | None = None) -> SemanticTeacher:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"semantic teacher directory {path} does not exist")
    if backend == "transformers":
        return HFSemanticTeacher(path, num_layers, data_norm)
    if backend == "open_clip":
        return OpenClipSemanticTeacher(path, num_layers, data_norm)
    if backend == "internvit":  # a released InternVL-C vision tower converted by `iv convert-teacher`
        from ivtrain.models.internvit import InternViTSemanticTeacher

        return InternViTSemanticTeacher(path, num_layers, data_norm)
    raise ValueError(f"unknown semantic teacher backend {backend!r} (transformers | open_clip | internvit)")


class MotionTeacher(nn.Module):
    """A transformers VideoMAE model (tubelet 2) from a local directory; returns last-K layer features."""

    def __init__(self, path: str | Path, num_layers: int, data_norm: tuple[list[float], list[float]] | None = None):
        super().__init__()
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"motion teacher directory {path} does not exist")
        from transformers import VideoMAEConfig, VideoMAEModel

        config = VideoMAEConfig.from_pretrained(path)
        self.model = _freeze(VideoMAEModel.from_pretrained(path))
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.tubelet_size, self.num_frames = config.tubelet_size, config.num_frames
        self.hidden_size, self.depth, self.mlp_size = config.hidden_size, config.num_hidden_layers, config.intermediate_size
        if not 1 <= num_layers <= self.depth:
            raise ValueError(f"motion teacher has {self.depth} layers, asked to tap {num_layers}")
        self.num_layers = num_layers
        self.input_norm = InputNormalization(data_norm, saved_normalization(path))

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) normalized with the data config's mean and std
        -> (K, B, T/tubelet * H/p * W/p, C): the outputs of the last K blocks, the last one through the encoder's
        final LayerNorm when it has one (a VideoMAE pretraining encoder, as the released VideoMAE V2-g teacher:
        transformers keeps that norm as `layernorm` when use_mean_pooling is off)."""
        pixels = self.input_norm(video).transpose(1, 2).to(self.model.dtype)  # VideoMAE takes (B, T, C, H, W)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        layers = list(out.hidden_states[-self.num_layers:])
        if getattr(self.model, "layernorm", None) is not None:
            layers[-1] = out.last_hidden_state
        return torch.stack(layers).float()

    def flops_per_sample(self) -> float:
        tokens = (self.num_frames // self.tubelet_size) * (self.image_size // self.patch_size) ** 2
        embed = patch_embed_flops(tokens, self.patch_size, self.tubelet_size, self.hidden_size)
        return embed + transformer_flops(tokens, self.hidden_size, self.mlp_size, self.depth)
