"""InternVideo2 stage 1: unmasked video token reconstruction from two frozen teachers.

Read top to bottom against the paper (Sec. 3.1 of InternVideo2):

1. A clip of `teacher_frames` frames (16) is sampled. The motion teacher (VideoMAE V2 style,
   tubelet 2) sees all of them; the student and the semantic (image) teacher see every second
   frame (8), so all three share one (8, H/p, W/p) token grid and one mask serves them all.
2. The semantic teacher's CLS attention picks which tokens stay visible (mask ~80 %).
3. The student encodes only the visible tokens (+ CLS).
4. Losses, each `2 - 2 cos` between L2-normalized features, only on visible tokens:
   - semantic: the student's last-K layers (through a linear head each) vs the semantic
     teacher's last-K layers (CLS slot: the teacher's CLS averaged over frames);
   - pooled: the student's attention-pooled output vs the teacher's pooled feature;
   - motion: the student's last-K layers (through an MLP head each) vs the motion teacher's
     last-K layers.
   The total is the recipe-weighted sum.

The objective knows nothing about DeepSpeed (ivtrain.objectives.base): the engine calls `prepare(batch)` (no grad:
teachers + mask) and then the trainable module `objective.trainable(**inputs) -> (loss, metrics)`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from ivtrain.config import ConfigError, Recipe
from ivtrain.data.masking import make_mask, visible_per_frame
from ivtrain.data.spec import SampleSpec, VideoSpec
from ivtrain.data.transforms import normalize
from ivtrain.models.heads import MLPHead, cosine_distance, linear_flops
from ivtrain.models.pos_embed import sincos_3d
from ivtrain.models.teachers import MotionTeacher, load_semantic_teacher, teacher_dtype
from ivtrain.models.vit import InternVideo2, ViTConfig, resolve_vit
from ivtrain.objectives.base import Objective


@dataclass
class TeacherConfig:
    path: str = ""                   # local directory holding the model (config + weights)
    backend: Literal["transformers", "open_clip", "internvit"] = "transformers"   # internvit: `iv convert-teacher`
    layers: int = 0                  # how many last layers to tap; 0 -> loss.align_layers


@dataclass
class TeachersConfig:
    semantic: TeacherConfig = field(default_factory=TeacherConfig)
    motion: TeacherConfig = field(default_factory=TeacherConfig)
    dtype: Literal["auto", "bf16", "fp32"] = "auto"   # auto: bf16 on CUDA, fp32 on CPU


@dataclass
class MaskConfig:
    type: Literal["attention", "tube", "random"] = "attention"
    ratio: float = 0.8               # fraction of tokens hidden from the student


@dataclass
class LossConfig:
    align_layers: int = 6            # last-K student layers aligned to the last-K semantic teacher layers
    semantic_weight: float = 1.0     # last-K layer alignment to the semantic teacher
    pooled_weight: float = 1.0       # pooled student output vs semantic teacher pooled feature
    motion_weight: float = 1.0       # last-K layer alignment to the motion teacher


@dataclass
class Stage1Config:
    """The `iv2_stage1:` section. The loader samples data.num_frames frames (the motion teacher's 16); the student
    and the semantic teacher see every (data.num_frames // student_frames)-th of them (8)."""
    student_frames: int = 8
    model: ViTConfig = field(default_factory=ViTConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)


class LinearHead(nn.Module):
    """Student width -> semantic teacher width."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.head = nn.Linear(dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))


class Stage1Student(nn.Module):
    """The trainable part: the InternVideo2 encoder plus the alignment heads."""

    def __init__(self, encoder: InternVideo2, semantic_dim: int, semantic_layers: int, pooled_dim: int,
                 motion_dim: int, motion_layers: int, weights: tuple[float, float, float]):
        super().__init__()
        d = encoder.cfg.embed_dim
        self.encoder = encoder
        self.semantic_index = tuple(range(encoder.depth - semantic_layers, encoder.depth))
        self.motion_index = tuple(range(encoder.depth - motion_layers, encoder.depth))
        # the heads get their own position tables (the visible tokens are gathered out of order, and the heads
        # must know where each one sits); sin-cos initialized and trained like the encoder's, as released
        table = sincos_3d(d, *encoder.grid).unsqueeze(0)
        trained = encoder.cfg.train_pos_embed
        self.clip_pos_embed = nn.Parameter(table.clone(), requires_grad=trained)
        self.mae_pos_embed = nn.Parameter(table[:, 1:].clone(), requires_grad=trained)
        self.clip_decoder = nn.ModuleList(LinearHead(d, semantic_dim) for _ in self.semantic_index)
        self.final_clip_decoder = LinearHead(pooled_dim, pooled_dim)
        self.mae_decoder = nn.ModuleList(MLPHead(d, motion_dim) for _ in self.motion_index)
        self.weights = weights

    def forward(self, video: torch.Tensor, visible: torch.Tensor, semantic: torch.Tensor,
                pooled: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """video (B,3,T,H,W); visible (B,N); semantic (K,B,1+Nv,Cs); pooled (B,Cp); motion (K',B,Nv,Cm)."""
        b = video.shape[0]
        out = self.encoder(video, visible, return_layers=self.semantic_index + self.motion_index)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=visible.device), visible], dim=1)
        clip_pos = self.clip_pos_embed.expand(b, -1, -1)[keep].reshape(b, -1, self.clip_pos_embed.shape[-1])
        mae_pos = self.mae_pos_embed.expand(b, -1, -1)[visible].reshape(b, -1, self.mae_pos_embed.shape[-1])

        semantic_pred = torch.stack([head(out.layers[i] + clip_pos)
                                     for head, i in zip(self.clip_decoder, self.semantic_index)])
        motion_pred = torch.stack([head(out.layers[i][:, 1:] + mae_pos)
                                   for head, i in zip(self.mae_decoder, self.motion_index)])
        pooled_pred = self.final_clip_decoder(out.pooled)

        loss_semantic = cosine_distance(semantic_pred, semantic)
        loss_pooled = cosine_distance(pooled_pred, pooled)
        loss_motion = cosine_distance(motion_pred, motion)
        w_sem, w_pool, w_mot = self.weights
        loss = w_sem * loss_semantic + w_pool * loss_pooled + w_mot * loss_motion
        metrics = {"loss/semantic": loss_semantic.detach(), "loss/pooled": loss_pooled.detach(),
                   "loss/motion": loss_motion.detach()}
        return loss, metrics


class IV2Stage1(Objective):
    """Owns the trainable student and the frozen teachers; maps a batch to the student's inputs."""

    name = "iv2_stage1"
    Config = Stage1Config
    prepare_name = "teachers"

    @classmethod
    def validate(cls, recipe: Recipe) -> None:
        cfg, data = recipe.section, recipe.data
        if cfg.student_frames <= 0 or data.num_frames % cfg.student_frames:
            raise ConfigError(f"data.num_frames ({data.num_frames}) must be a multiple of iv2_stage1.student_frames "
                              f"({cfg.student_frames})")
        if not 0.0 <= cfg.mask.ratio < 1.0:
            raise ConfigError(f"iv2_stage1.mask.ratio must be in [0, 1), got {cfg.mask.ratio}")
        try:
            resolve_vit(cfg.model)
        except ValueError as e:
            raise ConfigError(f"iv2_stage1.model: {e}") from None

    def __init__(self, recipe: Recipe, device: torch.device, dist=None):
        super().__init__(recipe, device, dist)
        cfg, data = recipe.section, recipe.data
        tcfg, k = cfg.teachers, cfg.loss.align_layers
        self.frame_stride = data.num_frames // cfg.student_frames
        dtype = teacher_dtype(tcfg.dtype, device)
        data_norm = (data.mean, data.std)
        self.semantic = load_semantic_teacher(tcfg.semantic.path, tcfg.semantic.layers or k, tcfg.semantic.backend,
                                              data_norm)
        self.motion = MotionTeacher(tcfg.motion.path, tcfg.motion.layers or k, data_norm)
        self.semantic.to(device=device, dtype=dtype)
        self.motion.to(device=device, dtype=dtype)

        vit = replace(cfg.model, img_size=cfg.model.img_size or data.image_size,
                      num_frames=cfg.model.num_frames or cfg.student_frames)
        encoder = InternVideo2(vit, pool_out_dim=self.semantic.pooled_dim, device=device)
        self._check_grids(encoder)
        self.trainable = Stage1Student(
            encoder, semantic_dim=self.semantic.hidden_size, semantic_layers=self.semantic.num_layers,
            pooled_dim=self.semantic.pooled_dim, motion_dim=self.motion.hidden_size,
            motion_layers=self.motion.num_layers,
            weights=(cfg.loss.semantic_weight, cfg.loss.pooled_weight, cfg.loss.motion_weight))
        if max(self.semantic.num_layers, self.motion.num_layers) > encoder.depth:
            raise ValueError(f"cannot align {max(self.semantic.num_layers, self.motion.num_layers)} layers: "
                             f"the student has {encoder.depth}")

    def _check_grids(self, encoder: InternVideo2) -> None:
        t, h, w = encoder.grid
        data = self.recipe.data
        sem_grid = data.image_size // self.semantic.patch_size
        mot = (data.num_frames // self.motion.tubelet_size, data.image_size // self.motion.patch_size)
        if (sem_grid, sem_grid) != (h, w) or mot != (t, h) or self.semantic.image_size != data.image_size:
            raise ValueError(
                f"token grids differ: student {encoder.grid}, semantic teacher {sem_grid}x{sem_grid} "
                f"(image {self.semantic.image_size}), motion teacher {mot[0]}x{mot[1]}x{mot[1]}; "
                "one mask must serve all three")
        if self.motion.num_frames != data.num_frames or self.motion.image_size != data.image_size:
            raise ValueError(f"motion teacher expects {self.motion.num_frames} frames of {self.motion.image_size}px, "
                             f"data gives {data.num_frames} of {data.image_size}px")

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(video=VideoSpec(frames=self.recipe.data.num_frames, size=self.recipe.data.image_size))

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        """Run the teachers and draw the mask; returns the keyword inputs of `trainable`."""
        data, mask = self.recipe.data, self.recipe.section.mask
        video = normalize(batch["video"].to(self.device, non_blocking=True), data.mean, data.std)  # (B, 3, T, H, W)
        student_video = video[:, :, ::self.frame_stride]
        sem = self.semantic(student_video)
        b, t, p = sem.cls_attention.shape
        visible = make_mask(mask.type, mask.ratio, b, t, p, cls_attention=sem.cls_attention, device=self.device,
                            seeds=batch.get("clip_seeds"))
        k, _, _, n1, cs = sem.layers.shape
        cls = sem.layers[:, :, :, 0].mean(2, keepdim=True)              # (K, B, 1, C): CLS over frames
        patches = sem.layers[:, :, :, 1:].reshape(k, b, t * p, cs)      # (K, B, N, C) in (t, h, w) order
        patches = patches[:, visible].reshape(k, b, -1, cs)
        motion = self.motion(video)                                     # (K', B, N, Cm)
        motion = motion[:, visible].reshape(motion.shape[0], b, -1, motion.shape[-1])
        return {"video": student_video, "visible": visible, "semantic": torch.cat([cls, patches], dim=2),
                "pooled": sem.pooled, "motion": motion}

    def flops_per_sample(self) -> dict[str, float]:
        """Training FLOPs per clip: student forward+backward (3x forward) and teacher forwards."""
        enc = self.trainable.encoder
        visible = visible_per_frame(enc.grid[1] * enc.grid[2], self.recipe.section.mask.ratio) * enc.grid[0]
        student = self.trainable
        # the decoder heads run on every visible token (+ CLS), the final one on the pooled vector
        heads = (visible + 1) * sum(linear_flops(h) for h in [*student.clip_decoder, *student.mae_decoder])
        heads += linear_flops(student.final_clip_decoder)
        return {"student": 3.0 * (enc.flops_per_sample(visible) + heads),
                "teachers": self.semantic.flops_per_sample(enc.grid[0]) + self.motion.flops_per_sample()}

    def flops(self, batch: dict) -> dict[str, float]:
        """Every clip costs the same: the per-clip count times the clips in the batch."""
        return {k: v * batch["size"] for k, v in self.flops_per_sample().items()}

    def export(self, state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """The encoder (what evaluations and stage 2 read) and the alignment heads (for the released stage-1 layout,
        `iv convert RUN --to stage1`)."""
        encoder = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        heads = {k: v for k, v in state_dict.items() if not k.startswith("encoder.")}
        return {"encoder": encoder, "heads": heads}

    def encoder_config(self) -> dict:
        data = self.recipe.data
        return {**self.trainable.encoder.config(), "mean": data.mean, "std": data.std}

    @classmethod
    def encoder_config_of(cls, recipe: Recipe) -> dict:
        """The student a recipe trains, without its teachers (whose pooled width sets the pooling head's output:
        here the encoder's own width stands in, which no token feature depends on)."""
        cfg, data = recipe.section, recipe.data
        vit = resolve_vit(replace(cfg.model, img_size=cfg.model.img_size or data.image_size,
                                  num_frames=cfg.model.num_frames or cfg.student_frames))
        return {**dataclasses.asdict(vit), "pool_out_dim": vit.embed_dim, "mean": data.mean, "std": data.std}

    @classmethod
    def write_tiny_assets(cls, out) -> dict[str, str]:
        """The tiny recipe's teachers: a random tiny CLIP image tower and a random tiny VideoMAE (32 px, patch 8,
        8 frames, tubelet 2), on the tiny student's 4 x 4 x 4 grid."""
        from ivtrain.tiny_teachers import save_tiny_clip_teacher, save_tiny_videomae_teacher

        out = Path(out)
        return {"tiny_clip": str(save_tiny_clip_teacher(out / "tiny_clip")),
                "tiny_videomae": str(save_tiny_videomae_teacher(out / "tiny_videomae"))}
