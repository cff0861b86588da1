"""InternVideo-Next stage 2: the stage-1 encoder, through the stage-1 predictor, predicts a frozen copy of itself
on large masked spatio-temporal blocks (latent prediction, as V-JEPA, against a fixed teacher).

Read top to bottom against the paper (and the released stage-2 code):

1. `init` is a finished `next_stage1` run. The student's encoder and predictor start from its `encoder` and
   `predictor` artifacts (position tables resized to this recipe's frames: 32 for B and L, 16 in stage 1); the
   teacher is the same stage-1 encoder, frozen. The released code keeps an EMA teacher and updates it with
   momentum 1.0 every step, which leaves it unchanged: here the teacher is simply frozen, outside the trainable
   module (no gradient, not in the optimizer or the checkpoints, rebuilt from `init` on resume).
   `teacher_momentum < 1` turns the EMA back on, as an ablation only (the teacher then lives in the checkpoints).
2. Masks: two multi-block views per clip (V-JEPA): 8 blocks of spatial scale 0.15 and 2 blocks of scale 0.7,
   aspect ratio 0.75-1.5, each block the whole clip in time; the encoder sees a fixed number of the uncovered
   patches per frame (the context). They are drawn in the loader's workers from each clip's seed.
3. Per view: the encoder runs on the context (and its CLS tokens); the predictor reads them with a mask token at
   every hidden place; a new MLP head (`proj`, the release's `selfdist_decoder`) maps the predictor's output at
   the hidden places to the encoder's width.
4. Target: the teacher's last-layer patch tokens on the whole clip, at the hidden places. Loss: 2 - 2cos of the
   L2-normalized pair (as released) or, with `loss.type: smooth_l1`, the smooth L1 distance between the head's
   output (it ends in a LayerNorm) and the LayerNorm-ed target (V-JEPA's target normalization). The views' losses
   are summed, as released.

Deliberate differences from the release, each for a reason:
- Block size is drawn per clip and view, not once per batch: a clip's mask then depends on its seed only (the
  same in any worker, rank or batch, which exact resume needs).
- The context is `context` x (patches per frame), chosen uniformly among the uncovered patches and the same in
  every frame; the release keeps the first min-over-the-batch uncovered tokens in raster order (capped at 400 per
  8 frames), which depends on the batch and drops the context of the last frames. Draws leaving less uncovered
  are redrawn (V-JEPA redraws an empty context). The defaults (0.2 and 0.03 of a frame) sit near the release's
  cap (50 of 256 patches per frame) and under the 1st percentile of the uncovered area of the 0.7-scale view.
- As released, every token the encoder does not see is a target (the uncovered patches left out of the context
  included).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.config import ConfigError, Recipe, build_recipe
from ivtrain.data.collate import collate as default_collate
from ivtrain.data.masking import BlockView, context_per_frame, multiblock_masks
from ivtrain.data.spec import SampleSpec, VideoSpec
from ivtrain.data.transforms import normalize
from ivtrain.export import encoder_grid, load_artifact, read_export
from ivtrain.models.heads import MLPHead, cosine_distance, linear_flops
from ivtrain.models.pos_embed import resize_pos_table
from ivtrain.models.predictor import ModernBertLayers, Predictor, read_modernbert
from ivtrain.models.teachers import teacher_dtype
from ivtrain.models.towers import load_vision_tower
from ivtrain.models.vit import InternVideo2
from ivtrain.objectives.base import Objective
from ivtrain.objectives.next_stage1 import NextStage1, NextViTConfig

PARTS = ("encoder", "predictor", "proj")   # exported: the encoder and predictor as stage 1 names them; the head


@dataclass
class ViewConfig:
    blocks: int
    scale: float                     # each block's area, as a fraction of a frame
    context: float                   # patches per frame the encoder sees, as a fraction of a frame


@dataclass
class MaskConfig:
    views: list[ViewConfig] = field(default_factory=lambda: [ViewConfig(8, 0.15, 0.2), ViewConfig(2, 0.7, 0.03)])
    aspect: tuple[float, ...] = (0.75, 1.5)   # block height / width, uniform in this range


@dataclass
class PredictorConfig:
    checkpoint_activations: bool = False   # its layers come from the stage-1 run (its recipe names the ModernBERT)


@dataclass
class LossConfig:
    type: Literal["cosine", "smooth_l1"] = "cosine"


@dataclass
class NextStage2Config:
    init: str = ""                   # a finished next_stage1 run directory
    model: NextViTConfig = field(default_factory=NextViTConfig)   # must match the stage-1 encoder but for frames
    pool_dim: int = 0                # as the stage-1 recipe's
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher_momentum: float = 1.0    # 1: a frozen teacher (the paper); < 1: an EMA of the student (ablation only)
    teacher_dtype: Literal["auto", "bf16", "fp32"] = "auto"


def block_views(cfg: MaskConfig) -> list[BlockView]:
    return [BlockView(v.blocks, v.scale, v.context, tuple(cfg.aspect)) for v in cfg.views]


def parameters_as_buffers(module: nn.Module) -> nn.Module:
    """The EMA teacher's weights as buffers: saved with the trainable module, never seen by the optimizer."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                del m._parameters[name]
                m.register_buffer(name, p.detach().clone())
    return module


class NextStage2Student(nn.Module):
    def __init__(self, encoder: InternVideo2, predictor: Predictor, loss_type: str):
        super().__init__()
        self.encoder, self.predictor, self.loss_type = encoder, predictor, loss_type
        self.proj = MLPHead(predictor.bert.arch.hidden, encoder.cfg.embed_dim)

    def predict(self, video: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """(B, N_hidden, encoder width): the head's prediction at each place the encoder did not see."""
        tokens = self.encoder(video, visible).tokens
        z = self.predictor(tokens, visible)[:, self.encoder.num_cls:]
        return self.proj(z[~visible].reshape(visible.shape[0], -1, z.shape[-1]))

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "cosine":
            return cosine_distance(pred, target)
        target = F.layer_norm(target.float(), target.shape[-1:])
        return F.smooth_l1_loss(pred.float(), target)

    def forward(self, video: torch.Tensor, visible: torch.Tensor, targets: torch.Tensor):
        """video (B,3,T,H,W) normalized; visible (V, B, N) one mask per view; targets (B, N, C) teacher tokens."""
        loss, metrics = 0.0, {}
        for v, mask in enumerate(visible):
            b, c = mask.shape[0], targets.shape[-1]
            view_loss = self.distance(self.predict(video, mask), targets[~mask].reshape(b, -1, c))
            loss = loss + view_loss
            metrics[f"loss/view{v}"] = view_loss.detach()
        return loss, metrics


class NextStage2(Objective):
    name = "next_stage2"
    Config = NextStage2Config
    prepare_name = "teacher"

    @classmethod
    def validate(cls, recipe: Recipe) -> None:
        cfg = recipe.section
        if not cfg.init:
            raise ConfigError("next_stage2.init must name a finished next_stage1 run directory")
        if not 0.0 < cfg.teacher_momentum <= 1.0:
            raise ConfigError(f"next_stage2.teacher_momentum must be in (0, 1], got {cfg.teacher_momentum}")
        aspect = cfg.mask.aspect
        if not cfg.mask.views or len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
            raise ConfigError("next_stage2.mask needs at least one view and an aspect range [low, high], "
                              "0 < low <= high")
        for i, v in enumerate(cfg.mask.views):
            if v.blocks < 1 or not 0 < v.scale <= 1 or not 0 < v.context < 1:
                raise ConfigError(f"next_stage2.mask.views[{i}]: blocks >= 1, scale in (0, 1], context in (0, 1)")
        try:
            vit = NextStage1.student_config(recipe)
        except ValueError as e:
            raise ConfigError(f"next_stage2.model: {e}") from None
        if vit.num_frames != recipe.data.num_frames:
            raise ConfigError(f"next_stage2.model.num_frames ({vit.num_frames}) must be data.num_frames "
                              f"({recipe.data.num_frames})")

    def __init__(self, recipe: Recipe, device: torch.device, dist=None):
        super().__init__(recipe, device, dist)
        cfg = recipe.section
        vit = NextStage1.student_config(recipe)
        meta = read_export(cfg.init)   # a missing or unfinished run fails here, before anything is built
        source = meta["encoder"]
        if meta["objective"] != "next_stage1":
            raise ValueError(f"next_stage2.init {cfg.init} is a {meta['objective']} run, not next_stage1")
        if (source["embed_dim"], source["patch_size"]) != (vit.embed_dim, vit.patch_size):
            raise ValueError(f"next_stage2.init {cfg.init}: its encoder is {source['embed_dim']} wide with patch "
                             f"{source['patch_size']}, the recipe's is {vit.embed_dim} wide with patch "
                             f"{vit.patch_size}")
        encoder = InternVideo2(vit, pool_out_dim=cfg.pool_dim or vit.embed_dim, device=device)
        load_vision_tower(encoder, load_artifact(cfg.init, "encoder"), source_grid=encoder_grid(source))
        self.grid = encoder.grid
        predictor = self.stage1_predictor(cfg, encoder, encoder_grid(source))
        # the teacher: the stage-1 encoder as loaded, frozen (eval: no stochastic depth)
        teacher = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.trainable = NextStage2Student(encoder, predictor, cfg.loss.type)
        self.momentum = cfg.teacher_momentum
        if self.momentum < 1.0:   # the EMA ablation: its weights are state to checkpoint, so they ride along
            self.trainable.ema_teacher = parameters_as_buffers(teacher)
            self.teacher = self.trainable.ema_teacher
        else:
            self.teacher = teacher.to(device=device, dtype=teacher_dtype(cfg.teacher_dtype, device))
        self.views = block_views(cfg.mask)

    def stage1_predictor(self, cfg: NextStage2Config, encoder: InternVideo2, source_grid) -> Predictor:
        """The stage-1 predictor: its ModernBERT layers as the stage-1 recipe took them, its trained weights from
        the export, its position table resized to this grid."""
        stage1 = build_recipe(json.loads((Path(cfg.init) / "recipe.json").read_text())).section
        arch = read_modernbert(stage1.predictor.path)
        layers = ModernBertLayers(arch, stage1.predictor.layers, encoder.backend,
                                  cfg.predictor.checkpoint_activations)
        predictor = Predictor(encoder.cfg.embed_dim, encoder.grid, encoder.num_cls, layers,
                              encoder.cfg.train_pos_embed)
        sd = load_artifact(cfg.init, "predictor")
        sd["pos_embed"] = resize_pos_table(sd["pos_embed"], source_grid, encoder.grid, encoder.num_cls)
        predictor.load_state_dict(sd, strict=True)
        return predictor

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(video=VideoSpec(frames=self.recipe.data.num_frames, size=self.recipe.data.image_size))

    def collate(self, samples: list[dict], spec: SampleSpec) -> dict:
        """In the loader's workers: the batch, and each clip's views from its seed."""
        batch = default_collate(samples, spec)
        batch["masks"] = multiblock_masks(self.views, self.grid, batch["clip_seeds"])
        return batch

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA ablation only: teacher = m teacher + (1 - m) student, from the weights the last step left."""
        student = dict(self.trainable.encoder.named_parameters())
        for name, t in self.teacher.named_buffers():
            if name in student:
                t.mul_(self.momentum).add_(student[name].detach().to(t.dtype), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        data = self.recipe.data
        video = normalize(batch["video"].to(self.device, non_blocking=True), data.mean, data.std)
        if self.momentum < 1.0:   # inside the trainable module, which the engine puts in train mode
            self.update_teacher()
            self.teacher.eval()
        tokens = self.teacher(video.to(self.teacher.pos_embed.dtype)).tokens[:, self.teacher.num_cls:]
        return {"video": video, "visible": batch["masks"].to(self.device), "targets": tokens}

    def flops_per_sample(self) -> dict[str, float]:
        student = self.trainable
        enc, pred = student.encoder, student.predictor
        t, h, w = enc.grid
        tokens = enc.num_cls + enc.num_patches
        out = {"encoder": 0.0, "predictor": 0.0, "teacher": enc.flops_per_sample()}
        for view in self.views:
            visible = context_per_frame(view, h, w) * t
            out["encoder"] += 3.0 * enc.flops_per_sample(visible)
            out["predictor"] += 3.0 * (tokens * linear_flops(pred.to_bert_proj) + pred.bert.flops(tokens)
                                       + (enc.num_patches - visible) * linear_flops(student.proj))
        return out

    def flops(self, batch: dict) -> dict[str, float]:
        return {k: v * batch["size"] for k, v in self.flops_per_sample().items()}

    def export(self, state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """The encoder (evaluations), the predictor (in stage 1's layout) and the head; never the teacher."""
        return {part: {k[len(part) + 1:]: v for k, v in state_dict.items() if k.startswith(part + ".")}
                for part in PARTS}

    def encoder_config(self) -> dict:
        data = self.recipe.data
        return {**self.trainable.encoder.config(), "mean": data.mean, "std": data.std}

    @classmethod
    def encoder_config_of(cls, recipe: Recipe) -> dict:
        return NextStage1.encoder_config_of(recipe)
