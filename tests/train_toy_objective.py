"""A small objective that is not stage 1, for the engine's tests (a recipe names it with objective_module).

It reads every part a sample spec can ask for: video and images (one-frame clips) from one batch, FLAC audio as
Kaldi fbank (optional: zeros where a clip has none), tokenized captions of differing lengths; it holds a frozen
tower; and its loss is InfoNCE over the global batch, through the engine's exact-gradient all-gather, so that two
processes of two samples train exactly as one process of four.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.data.spec import AudioSpec, CaptionSpec, SampleSpec, VideoSpec
from ivtrain.data.text import load_tokenizer
from ivtrain.data.transforms import normalize
from ivtrain.models.vit import InternVideo2, ViTConfig
from ivtrain.objectives import register
from ivtrain.objectives.base import Objective, Tower

WIDTH = 64
MEL_BINS = 16


@dataclass
class ToyConfig:
    tokenizer: str = ""                  # a local tokenizer directory
    frozen_width: int = 1024             # a frozen tower of WIDTH x frozen_width x 2 weights
    text_lr_mult: float = 2.0            # the text tower's lr multiplier
    audio_required: bool = False         # True: samples without a FLAC member are skipped (and a set with none refused)


class ToyModel(nn.Module):
    def __init__(self, vocab: int, frozen_width: int, dist):
        super().__init__()
        self.video = InternVideo2(ViTConfig(size="tiny", num_frames=4, img_size=32, depth=2), pool_out_dim=WIDTH)
        self.text = nn.Embedding(vocab, WIDTH)
        self.audio = nn.Linear(MEL_BINS, WIDTH)
        # frozen: never trained, never in the optimizer nor the checkpoints
        self.frozen = nn.Sequential(nn.Linear(WIDTH, frozen_width), nn.Linear(frozen_width, WIDTH))
        self.frozen.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.tensor([2.0]))   # DeepSpeed broadcasts no 0-dim parameter
        self.dist = dist

    def encode_video(self, video: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Clips and images in one batch: each group of equal frame count goes through the tower at its own T
        (images use the tower's one-frame position table); results return in batch order."""
        out = torch.empty(video.shape[0], WIDTH, device=video.device)
        for t in frames.unique().tolist():
            rows = (frames == t).nonzero().squeeze(1)
            out = out.index_copy(0, rows, self.video(video[rows, :, :t]).pooled)
        return out

    def forward(self, video, frames, ids, text_mask, audio, audio_mask, has_audio):
        v = self.encode_video(video, frames)
        m = audio_mask.unsqueeze(-1).float()
        a = (self.audio(audio) * m).sum(1) / m.sum(1).clamp_min(1.0)
        v = v + a * has_audio.unsqueeze(-1).float() + self.frozen(v)
        tm = text_mask.unsqueeze(-1).float()
        t = (self.text(ids) * tm).sum(1) / tm.sum(1)
        v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
        all_t = self.dist.all_gather(t)     # local rows against the global batch's texts
        logits = self.logit_scale.exp() * v @ all_t.T
        target = torch.arange(v.shape[0], device=v.device) + self.dist.rank * v.shape[0]
        loss = F.cross_entropy(logits, target)
        return loss, {"loss/nce": loss.detach(), "text_tokens": text_mask.sum().float() / text_mask.shape[0]}


@register
class ToyMixture(Objective):
    name = "toy_mixture"
    Config = ToyConfig
    prepare_name = "normalize"
    throughput_unit = "tokens"

    def __init__(self, recipe, device, dist=None):
        super().__init__(recipe, device, dist)
        cfg = recipe.section
        tokenizer = load_tokenizer(cfg.tokenizer)
        self.trainable = ToyModel(len(tokenizer), cfg.frozen_width, self.dist)

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(video=VideoSpec(frames=4, size=32), images=True,
                          audio=AudioSpec(seconds=2.0, features="fbank", num_mel_bins=MEL_BINS,
                                          required=self.recipe.section.audio_required),
                          captions=(("caption", CaptionSpec(kinds=("web", "V"), tokenizer=self.recipe.section.tokenizer,
                                                            max_length=12)),))

    def towers(self) -> list[Tower]:
        return [Tower(""), Tower("text.", self.recipe.section.text_lr_mult)]

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict:
        d = self.recipe.data
        caption = batch["captions"]["caption"]
        return {"video": normalize(batch["video"].to(self.device), d.mean, d.std), "frames": batch["frames"],
                "ids": caption["ids"], "text_mask": caption["mask"], "audio": batch["audio"],
                "audio_mask": batch["audio_mask"], "has_audio": batch["has_audio"]}

    def flops(self, batch: dict) -> dict[str, float]:
        tokens = int(batch["frames"].sum()) * 16 + batch["size"]      # 4 x 4 patches a frame, a CLS a clip
        video = 3 * 2 * tokens * sum(p.numel() for p in self.trainable.video.blocks.parameters())
        frozen = 2 * batch["size"] * sum(p.numel() for p in self.trainable.frozen.parameters())
        return {"video": float(video), "frozen": float(frozen)}

    def count(self, batch: dict) -> int:
        return int(batch["captions"]["caption"]["mask"].sum())

    def export(self, state_dict):
        encoder = {k[len("video."):]: v for k, v in state_dict.items() if k.startswith("video.")}
        return {"encoder": encoder, "rest": {k: v for k, v in state_dict.items() if not k.startswith("video.")}}

    def encoder_config(self) -> dict:
        return {**self.trainable.video.config(), "mean": self.recipe.data.mean, "std": self.recipe.data.std}

    @classmethod
    def encoder_config_of(cls, recipe) -> dict:
        return {**InternVideo2(ViTConfig(size="tiny", num_frames=4, img_size=32, depth=2), WIDTH).config(),
                "mean": recipe.data.mean, "std": recipe.data.std}
