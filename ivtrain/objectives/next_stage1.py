"""InternVideo-Next stage 1: an encoder aligned to a frozen image teacher, and a predictor + diffusion decoder that
reconstruct the pixels of what the encoder did not see.

Read top to bottom against the paper (and the released stage-1 code, minus its faults):

1. A clip of `data.num_frames` frames (16) is sampled; the student and the teacher see all of them, on one
   (T, H/p, W/p) grid (a SigLIP2 teacher at 256 px and patch 16 for a 224 px, patch 14 student).
2. The teacher's attention-pooling head says where to look: per frame, the visible patches are drawn in proportion
   to its attention, without replacement (75-80 % hidden).
3. The encoder (4 CLS tokens, a patch embedding normalized before and after its projection) encodes the CLS tokens
   and the visible tokens only.
4. Alignment, `2 - 2cos` on L2-normalized features: each of the encoder's last K layers (its visible tokens, plus
   a position table, through its own MLP head) against the teacher's tapped layer of the same rank; the pooled
   output (through an MLP head) against the teacher's pooled feature.
5. Reconstruction: the predictor (the last layers of a ModernBERT) reads the CLS tokens, the visible tokens and a
   mask token at every hidden place; for each hidden patch, its output conditions the per-patch diffusion decoder,
   trained with the improved-DDPM loss (noise MSE + variational bound, learned variance) on the patch's pixels
   as the data normalized them, in fp32. Timesteps and noise come from each clip's seed.
6. The loss is the weighted sum (1, 1, 1 as released); `loss.diffusion_weight: 0` trains the alignment alone
   (no predictor or decoder is built).
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
from ivtrain.models.denoiser import DiffusionDecoder
from ivtrain.models.diffusion import training_draws
from ivtrain.models.heads import MLPHead, cosine_distance, linear_flops
from ivtrain.models.patches import patchify
from ivtrain.models.pos_embed import sincos_3d
from ivtrain.models.predictor import ModernBertLayers, Predictor, read_modernbert
from ivtrain.models.siglip_teacher import SiglipTeacher
from ivtrain.models.teachers import teacher_dtype
from ivtrain.models.vit import InternVideo2, ViTConfig, resolve_vit
from ivtrain.objectives.base import Objective

DIFFUSION_STREAM = 1   # the clips' random stream for diffusion timesteps and noise (0 is the mask's)
PARTS = ("encoder", "predictor", "decoder")   # exported as artifacts named after their module; the rest is "heads"


@dataclass
class NextViTConfig(ViTConfig):
    """The encoder: InternVideo2's tower with InternVideo-Next's 4 CLS tokens and normalized patch embedding."""
    cls_tokens: int = 4
    patch_norm: bool = True


@dataclass
class TeacherConfig:
    path: str = ""                   # a transformers SigLIP / SigLIP2 vision tower (its MAP head included)
    layers: int = 0                  # layers tapped (their inputs are the targets); 0 -> loss.align_layers
    interval: float = 1.0            # tapped: depth-1 - int(k * interval), k < layers (SigLIP2-1B: 3.33 for B)
    dtype: Literal["auto", "bf16", "fp32"] = "auto"   # auto: bf16 on CUDA, fp32 on CPU


@dataclass
class PredictorConfig:
    path: str = ""                   # a transformers ModernBERT directory (config.json + safetensors)
    layers: int = 5                  # its last K layers
    checkpoint_activations: bool = False


@dataclass
class DecoderConfig:
    width: int = 1536
    depth: int = 6
    steps: int = 1000                # diffusion steps (cosine schedule)
    batch_mul: int = 1               # each hidden patch diffused this many times a step (the release's
                                     # diffusion_batch_mul: 1 for B and L; MAR's 4)


@dataclass
class MaskConfig:
    type: Literal["attention", "tube", "random"] = "attention"
    ratio: float = 0.8               # fraction of patches hidden from the encoder


@dataclass
class LossConfig:
    align_layers: int = 6            # the encoder's last K layers, each aligned to one tapped teacher layer
    align_weight: float = 1.0
    pooled_weight: float = 1.0
    diffusion_weight: float = 1.0    # 0: alignment only, no predictor and no decoder


@dataclass
class NextStage1Config:
    model: NextViTConfig = field(default_factory=NextViTConfig)
    pool_dim: int = 0                # the attention pooling's output width (released: 768); 0 -> model width
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)


class NextStage1Student(nn.Module):
    """The trainable part: encoder, alignment heads, and (with the diffusion loss) predictor and decoder."""

    def __init__(self, encoder: InternVideo2, teacher_dim: int, align_layers: int, pooled_dim: int,
                 predictor: Predictor | None, decoder: DiffusionDecoder | None, weights: tuple[float, float, float]):
        super().__init__()
        d, cls = encoder.cfg.embed_dim, encoder.num_cls
        self.encoder = encoder
        self.align_index = tuple(range(encoder.depth - align_layers, encoder.depth))
        # the heads' own position table: the visible tokens arrive out of place (sin-cos start, trained)
        self.clip_pos_embed = nn.Parameter(sincos_3d(d, *encoder.grid, cls_token=cls).unsqueeze(0),
                                           requires_grad=encoder.cfg.train_pos_embed)
        self.clip_decoder = nn.ModuleList(MLPHead(d, teacher_dim) for _ in self.align_index)
        self.final_clip_decoder = MLPHead(encoder.clip_projector.cross_attn.proj.out_features, pooled_dim)
        self.predictor, self.decoder, self.weights = predictor, decoder, weights

    def aligned(self, layers: dict[int, torch.Tensor], visible: torch.Tensor) -> torch.Tensor:
        """(K, B, N_visible, teacher width): head k reads the k-th aligned layer's patch tokens."""
        b, cls = visible.shape[0], self.encoder.num_cls
        pos = self.clip_pos_embed[:, cls:].expand(b, -1, -1)[visible].reshape(b, -1, self.clip_pos_embed.shape[-1])
        return torch.stack([head(layers[i][:, cls:] + pos) for head, i in zip(self.clip_decoder, self.align_index)])

    def conditions(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The predictor's output at each hidden place: (B, N_hidden, predictor width)."""
        z = self.predictor(tokens, visible)[:, self.encoder.num_cls:]
        return z[~visible].reshape(visible.shape[0], -1, z.shape[-1])

    def targets(self, video: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The hidden patches' pixels (B, N_hidden, 3 p p), as the data normalized them, channel first."""
        cfg = self.encoder.cfg
        patches = patchify(video.float(), cfg.patch_size, cfg.tubelet_size, order="cthw")
        return patches[~visible].reshape(visible.shape[0], -1, patches.shape[-1])

    def forward(self, video: torch.Tensor, visible: torch.Tensor, align_targets: torch.Tensor, pooled: torch.Tensor,
                timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        """video (B,3,T,H,W) normalized; visible (B,N); align_targets (K,B,N_visible,C); pooled (B,C);
        timesteps (B, M) and noise (B, M, 3 p p) for the diffusion loss, M = N_hidden x decoder.batch_mul."""
        out = self.encoder(video, visible, return_layers=self.align_index)
        w_align, w_pool, w_diff = self.weights
        loss_align = cosine_distance(self.aligned(out.layers, visible), align_targets)
        # the pooled target is the mean over frames of the teacher's unit vectors, not normalized again (as released)
        loss_pooled = cosine_distance(self.final_clip_decoder(out.pooled), pooled, normalize_target=False)
        loss = w_align * loss_align + w_pool * loss_pooled
        metrics = {"loss/align": loss_align.detach(), "loss/pooled": loss_pooled.detach()}
        if self.decoder is not None:   # each clip's hidden patches, repeated batch_mul times
            mul = self.decoder.batch_mul
            z = self.conditions(out.tokens, visible).repeat(1, mul, 1).flatten(0, 1)
            x0 = self.targets(video, visible).repeat(1, mul, 1).flatten(0, 1)
            terms = self.decoder.loss(x0, z, timesteps.flatten(), noise.flatten(0, 1))
            loss = loss + w_diff * terms["loss"].mean()
            metrics.update({f"loss/diffusion{'' if k == 'loss' else '_' + k}": v.mean().detach()
                            for k, v in terms.items()})
        return loss, metrics


class NextStage1(Objective):
    name = "next_stage1"
    Config = NextStage1Config
    prepare_name = "teacher"

    @classmethod
    def validate(cls, recipe: Recipe) -> None:
        cfg = recipe.section
        if not 0.0 <= cfg.mask.ratio < 1.0:
            raise ConfigError(f"next_stage1.mask.ratio must be in [0, 1), got {cfg.mask.ratio}")
        if cfg.loss.align_layers < 1 or cfg.predictor.layers < 1:
            raise ConfigError("next_stage1.loss.align_layers and next_stage1.predictor.layers must be at least 1")
        try:
            vit = cls.student_config(recipe)
        except ValueError as e:
            raise ConfigError(f"next_stage1.model: {e}") from None
        if vit.tubelet_size != 1:
            raise ConfigError("next_stage1.model.tubelet_size must be 1: the image teacher sees every frame")
        if vit.num_frames != recipe.data.num_frames:
            raise ConfigError(f"next_stage1.model.num_frames ({vit.num_frames}) must be data.num_frames "
                              f"({recipe.data.num_frames}): the teacher and the student see the same frames")

    @staticmethod
    def student_config(recipe: Recipe) -> ViTConfig:
        model, data = recipe.section.model, recipe.data
        return resolve_vit(replace(model, img_size=model.img_size or data.image_size,
                                   num_frames=model.num_frames or data.num_frames))

    def __init__(self, recipe: Recipe, device: torch.device, dist=None):
        super().__init__(recipe, device, dist)
        cfg, data = recipe.section, recipe.data
        diffusion = cfg.loss.diffusion_weight != 0
        arch = read_modernbert(cfg.predictor.path) if diffusion else None   # a bad directory fails first, cheaply
        if arch is not None and cfg.predictor.layers > arch.depth:
            raise ValueError(f"next_stage1.predictor.layers is {cfg.predictor.layers}, but the ModernBERT in "
                             f"{cfg.predictor.path} has {arch.depth} layers")
        k = cfg.loss.align_layers
        self.teacher = SiglipTeacher(cfg.teacher.path, cfg.teacher.layers or k, cfg.teacher.interval,
                                     (data.mean, data.std))
        self.teacher.to(device=device, dtype=teacher_dtype(cfg.teacher.dtype, device))
        vit = self.student_config(recipe)
        encoder = InternVideo2(vit, pool_out_dim=cfg.pool_dim or vit.embed_dim, device=device)
        self.teacher.size_for(encoder.grid[1])   # the grids must agree before any step
        if k > encoder.depth or (cfg.teacher.layers or k) != k:
            raise ValueError(f"cannot align {k} encoder layers to {cfg.teacher.layers or k} teacher layers "
                             f"(the encoder has {encoder.depth})")
        predictor = decoder = None
        if diffusion:
            layers = ModernBertLayers(arch, cfg.predictor.layers, encoder.backend, cfg.predictor.checkpoint_activations)
            layers.load_from(cfg.predictor.path)
            predictor = Predictor(vit.embed_dim, encoder.grid, encoder.num_cls, layers, vit.train_pos_embed)
            decoder = DiffusionDecoder(3 * vit.patch_size ** 2, arch.hidden, cfg.decoder.width, cfg.decoder.depth,
                                       cfg.decoder.steps, cfg.decoder.batch_mul)
        self.trainable = NextStage1Student(encoder, self.teacher.hidden_size, k, self.teacher.pooled_dim, predictor,
                                           decoder, (cfg.loss.align_weight, cfg.loss.pooled_weight,
                                                     cfg.loss.diffusion_weight))

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(video=VideoSpec(frames=self.recipe.data.num_frames, size=self.recipe.data.image_size))

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        """Run the teacher, draw the mask and the diffusion noise; returns the keyword inputs of `trainable`."""
        data, mask = self.recipe.data, self.recipe.section.mask
        video = normalize(batch["video"].to(self.device, non_blocking=True), data.mean, data.std)  # (B, 3, T, H, W)
        target = self.teacher(video, self.trainable.encoder.grid[1])
        b, t, p = target.attention.shape
        seeds = batch.get("clip_seeds")
        visible = make_mask(mask.type, mask.ratio, b, t, p, cls_attention=target.attention, device=self.device,
                            seeds=seeds)
        k, c = target.layers.shape[0], target.layers.shape[-1]
        layers = target.layers.reshape(k, b, t * p, c)[:, visible].reshape(k, b, -1, c)
        inputs = {"video": video, "visible": visible, "align_targets": layers, "pooled": target.pooled}
        decoder = self.trainable.decoder
        if decoder is not None:   # each hidden patch is diffused decoder.batch_mul times
            count = (t * p - int(visible[0].sum())) * decoder.batch_mul
            draws = training_draws(seeds, b, count, decoder.channels, decoder.diffusion.num_timesteps, DIFFUSION_STREAM)
            inputs["timesteps"], inputs["noise"] = (x.to(self.device) for x in draws)
        return inputs

    def flops_per_sample(self) -> dict[str, float]:
        """Training FLOPs per clip, by part: forward + backward (3x the forward) of the trainable ones, the
        teacher's forward."""
        student = self.trainable
        enc = student.encoder
        t, h, w = enc.grid
        visible = visible_per_frame(h * w, self.recipe.section.mask.ratio) * t
        heads = visible * sum(linear_flops(m) for m in student.clip_decoder) + linear_flops(student.final_clip_decoder)
        out = {"encoder": 3.0 * (enc.flops_per_sample(visible) + heads),
               "teacher": self.teacher.flops_per_sample(t, h)}
        if student.decoder is not None:
            tokens = enc.num_cls + enc.num_patches
            pred = student.predictor
            out["predictor"] = 3.0 * (tokens * linear_flops(pred.to_bert_proj) + pred.bert.flops(tokens))
            patches = (enc.num_patches - visible) * student.decoder.batch_mul
            out["decoder"] = 3.0 * patches * linear_flops(student.decoder.net)
        return out

    def flops(self, batch: dict) -> dict[str, float]:
        return {k: v * batch["size"] for k, v in self.flops_per_sample().items()}

    def export(self, state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """The encoder (evaluations, stage 2), the predictor and the decoder (stage 2 starts from them), the heads."""
        out = {part: {k[len(part) + 1:]: v for k, v in state_dict.items() if k.startswith(part + ".")}
               for part in PARTS}
        out["heads"] = {k: v for k, v in state_dict.items() if not k.startswith(tuple(p + "." for p in PARTS))}
        return {name: sd for name, sd in out.items() if sd}

    def load_export(self, artifacts: dict[str, dict[str, torch.Tensor]]) -> None:
        """The inverse of `export`: a finished run's artifacts back into the trainable module (strict)."""
        sd = dict(artifacts.get("heads", {}))
        for part in PARTS:
            sd.update({f"{part}.{k}": v for k, v in artifacts.get(part, {}).items()})
        self.trainable.load_state_dict(sd, strict=True)

    def encoder_config(self) -> dict:
        data = self.recipe.data
        return {**self.trainable.encoder.config(), "mean": data.mean, "std": data.std}

    @classmethod
    def encoder_config_of(cls, recipe: Recipe) -> dict:
        vit, data = cls.student_config(recipe), recipe.data
        return {**dataclasses.asdict(vit), "pool_out_dim": recipe.section.pool_dim or vit.embed_dim,
                "mean": data.mean, "std": data.std}

    @classmethod
    def write_tiny_assets(cls, out) -> dict[str, str]:
        """The tiny recipe's teacher (a random tiny SigLIP tower, 64 px at patch 16: the tiny student's 4 x 4
        grid) and predictor source (a random tiny ModernBERT, 6 layers, a 4-token window each side)."""
        from ivtrain.tiny_teachers import save_tiny_modernbert, save_tiny_siglip_teacher

        out = Path(out)
        return {"tiny_siglip": str(save_tiny_siglip_teacher(out / "tiny_siglip")),
                "tiny_modernbert": str(save_tiny_modernbert(out / "tiny_modernbert"))}
