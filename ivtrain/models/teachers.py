"""Frozen teachers for distillation, loaded from local directories.

- SemanticTeacher: an image tower (CLIP / SigLIP vision model in transformers format) run on every
  student frame. It yields the last-K layer features, a pooled feature and the CLS attention map
  that guides masking.
- MotionTeacher: a VideoMAE (V2-style, tubelet 2) video model run on all teacher frames. It yields
  the last-K layer features on the same (T/2, H/p, W/p) grid as the student.

Teachers never get gradients, run in eval mode, and are cast to bf16 on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


def teacher_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _transformer_flops(tokens: int, dim: int, mlp: int, depth: int) -> float:
    return float(depth * (2 * tokens * (4 * dim * dim + 2 * dim * mlp) + 4 * tokens * tokens * dim))


@dataclass
class SemanticTargets:
    layers: torch.Tensor      # (K, B, T, 1 + P, C): last-K layer features, CLS first, per frame
    pooled: torch.Tensor      # (B, C_pool): pooled feature averaged over frames
    cls_attention: torch.Tensor  # (B, T, P): last-layer attention from CLS to each patch, averaged over heads


class SemanticTeacher(nn.Module):
    """A transformers image tower (CLIPVisionModel[WithProjection], SiglipVisionModel, or a full CLIP/SigLIP model)."""

    def __init__(self, path: str | Path, num_layers: int, backend: str = "transformers"):
        super().__init__()
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"semantic teacher directory {path} does not exist")
        if backend == "open_clip":
            raise NotImplementedError(
                "the open_clip semantic teacher backend is not implemented yet; convert the tower to "
                "transformers format (CLIPVisionModel / SiglipVisionModel) and use backend: transformers")
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
        self.num_layers = num_layers
        if not 1 <= num_layers <= self.depth:
            raise ValueError(f"semantic teacher has {self.depth} layers, asked to tap {num_layers}")
        # CLIP-style towers prepend a CLS token; SigLIP-style ones do not
        self.has_cls = hasattr(self.model.embeddings, "class_embedding")
        with torch.no_grad():
            self.pooled_dim = self._pooled(torch.zeros(1, 1, self.hidden_size), torch.zeros(1, self.hidden_size)).shape[-1]

    def _pooled(self, hidden: torch.Tensor, pooler_output: torch.Tensor) -> torch.Tensor:
        return self.projection(pooler_output) if self.projection is not None else pooler_output

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> SemanticTargets:
        """frames: (B, 3, T, H, W), normalized."""
        b, c, t, h, w = frames.shape
        images = frames.transpose(1, 2).reshape(b * t, c, h, w).to(self.model.dtype)
        out = self.model(pixel_values=images, output_hidden_states=True, output_attentions=True)
        hidden = out.hidden_states[-self.num_layers:]  # the outputs of the last K blocks
        layers = torch.stack(hidden)  # (K, B*T, tokens, C)
        if not self.has_cls:  # give CLS-free towers a CLS slot: the mean token
            layers = torch.cat([layers.mean(2, keepdim=True), layers], dim=2)
        attn = out.attentions[-1].float().mean(1)  # (B*T, tokens, tokens)
        cls_attention = attn[:, 0, 1:] if self.has_cls else attn.mean(1)
        pooled = self._pooled(out.last_hidden_state, out.pooler_output).float()
        k, _, n, ch = layers.shape
        return SemanticTargets(
            layers=layers.reshape(k, b, t, n, ch).float(),
            pooled=pooled.reshape(b, t, -1).mean(1),
            cls_attention=cls_attention.reshape(b, t, -1))

    def flops_per_sample(self, frames: int) -> float:
        tokens = (self.image_size // self.patch_size) ** 2 + int(self.has_cls)
        return frames * _transformer_flops(tokens, self.hidden_size, self.mlp_size, self.depth)


class MotionTeacher(nn.Module):
    """A transformers VideoMAE model (tubelet 2) from a local directory; returns last-K layer features."""

    def __init__(self, path: str | Path, num_layers: int):
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

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) normalized -> (K, B, T/tubelet * H/p * W/p, C)."""
        pixels = video.transpose(1, 2).to(self.model.dtype)  # VideoMAE takes (B, T, C, H, W)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return torch.stack(out.hidden_states[-self.num_layers:]).float()

    def flops_per_sample(self) -> float:
        tokens = (self.num_frames // self.tubelet_size) * (self.image_size // self.patch_size) ** 2
        return _transformer_flops(tokens, self.hidden_size, self.mlp_size, self.depth)


def save_tiny_clip_teacher(path: str | Path, image_size: int = 32, patch_size: int = 8, hidden: int = 48,
                           layers: int = 3, projection_dim: int = 32, seed: int = 0) -> Path:
    """Write a randomly initialized tiny CLIP image tower (with projection) to `path` (tests, demos)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                           intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=4,
                           projection_dim=projection_dim)
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return Path(path)


def tiny_videomae_config(image_size: int = 32, patch_size: int = 8, num_frames: int = 8, hidden: int = 48,
                         layers: int = 3):
    from transformers import VideoMAEConfig

    return VideoMAEConfig(image_size=image_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=2,
                          hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                          num_attention_heads=4, decoder_hidden_size=64, decoder_intermediate_size=128,
                          decoder_num_hidden_layers=2, decoder_num_attention_heads=4, use_mean_pooling=True,
                          norm_pix_loss=False)  # flat synthetic patches make per-patch normalized targets noise


def save_tiny_videomae_teacher(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write a randomly initialized tiny VideoMAE to `path` (tests, demos)."""
    from transformers import VideoMAEModel

    torch.manual_seed(seed)
    VideoMAEModel(tiny_videomae_config(**kwargs)).save_pretrained(path)
    return Path(path)
