"""InternVideo2 stage 2: video-audio-speech-text alignment (Sec. 3.2 of InternVideo2), read top to bottom.

1. The vision tower starts from stage 1 (`vision.init`: a stage-1 run, `iv convert` output, or a released
   pretrain.pth), loaded strictly at this recipe's frame count (4 as released: the position table is resized), with
   a separate one-frame table for images (started from sin-cos when the source has none). Each clip hides 80 % of
   its tokens at random (`vision.video_mask`), each image 50 % (`vision.image_mask`), drawn from the clip's seed.
2. The text tower is BERT from a local transformers directory; its layers from `text.fusion_layer` on also
   cross-attend to the visible vision tokens (ivtrain.models.text.FusionBert). The text CLS after the text-only
   layers and the pooled vision output are projected to `embed_dim`; the temperature starts at `temp` and is
   clamped to [temp_min, temp_max] every step.
3. With `audio.path`, a frozen BEATs (the release's layout, ivtrain.models.audio) encodes the clip's fbank, and
   [audio_proj, vision_proj] -> av_fusion is the clip's audio-visual feature for the AV losses.
4. Losses (ivtrain.objectives.iv2_stage2_model): VTC, VTM, MLM and their audio-visual versions AVTC, AVTM, AVMLM,
   weighted by `loss`. `captions` says which caption kinds each loss reads (first present, by preference) and
   `sources` which losses each source's batches feed (a source not named feeds VTC, VTM and MLM): an image-text
   set, a captioned video set and an InternVid2-style set with audio and AVS captions each get their own. A sample
   lacking a caption kind (or the audio) its source's losses need is skipped and counted (data/skipped/...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from ivtrain.config import ConfigError, Recipe
from ivtrain.data.masking import make_mask, visible_per_frame
from ivtrain.data.spec import AudioSpec, CaptionSpec, SampleSpec, VideoSpec
from ivtrain.data.text import load_tokenizer
from ivtrain.data.transforms import normalize
from ivtrain.models.vit import InternVideo2, ViTConfig, resolve_vit
from ivtrain.objectives.base import Objective, Tower
from ivtrain.objectives.iv2_stage2_losses import mlm_mask, same_identity
from ivtrain.objectives.iv2_stage2_model import AV_LOSSES, Stage2Model

LOSSES = ("vtc", "vtm", "mlm") + AV_LOSSES
MLM_SALT = {"mlm": 0x6D6C6D, "avmlm": 0x61766D6C6D}


@dataclass
class MaskConfig:
    type: Literal["random", "tube"] = "random"
    ratio: float = 0.8               # fraction of tokens hidden


@dataclass
class VisionConfig:
    init: str = ""                   # stage-1 run dir, or a checkpoint (ivkit safetensors, released pretrain.pth)
    model: ViTConfig = field(default_factory=lambda: ViTConfig(image_pos_embed=True))
    pool_dim: int = 0                # pooled width (released: 768); 0: the init's, else the tower's width
    video_mask: MaskConfig = field(default_factory=lambda: MaskConfig("random", 0.8))
    image_mask: MaskConfig = field(default_factory=lambda: MaskConfig("random", 0.5))


@dataclass
class TextConfig:
    path: str = ""                   # a local transformers BERT directory (bert-large-uncased as released)
    tokenizer: str = ""              # a local tokenizer directory; "": the one in `path`
    fusion_layer: int = 19           # layers from this one on cross-attend to the vision tokens
    max_length: int = 32             # tokens per caption, special tokens included


@dataclass
class AudioConfig:
    path: str = ""                   # a released BEATs checkpoint (or a directory holding one); "": no audio
    seconds: float = 10.0            # the clip's first seconds, zero-padded to this length as released
    num_mel_bins: int = 64           # the released 6B loader's fbank


@dataclass
class LossConfig:
    vtc: float = 1.0
    vtm: float = 1.0
    mlm: float = 1.0
    avtc: float = 0.0
    avtm: float = 0.0
    avmlm: float = 0.0
    mlm_prob: float = 0.5
    vtm_negatives: Literal["global", "local"] = "global"   # local: from this rank's batch only, as released


@dataclass
class Stage2Config:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    embed_dim: int = 512             # the shared space of the contrastive losses
    av_concat_dim: int = 0           # > 0: vision and audio tokens projected to this width before fusion (6B)
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    loss: LossConfig = field(default_factory=LossConfig)
    # loss name (or `default`) -> caption kinds by preference
    captions: dict[str, list[str]] = field(default_factory=lambda: {"default": ["V", "web"], "avtc": ["AVS"],
                                                                    "avtm": ["AVS"], "avmlm": ["AVS"]})
    sources: dict[str, list[str]] = field(default_factory=dict)   # mixture source name -> the losses it feeds


def vision_config(cfg: Stage2Config, recipe: Recipe) -> ViTConfig:
    data = recipe.data
    return resolve_vit(replace(cfg.vision.model, img_size=cfg.vision.model.img_size or data.image_size,
                               num_frames=cfg.vision.model.num_frames or data.num_frames))


class IV2Stage2(Objective):
    name = "iv2_stage2"
    Config = Stage2Config
    prepare_name = "masks"
    throughput_unit = "tokens"

    @classmethod
    def validate(cls, recipe: Recipe) -> None:
        cfg = recipe.section
        weights = dataclasses.asdict(cfg.loss)
        sources = {s.name for s in recipe.data.source_list()}
        for name, losses in cfg.sources.items():
            if name not in sources:
                raise ConfigError(f"iv2_stage2.sources.{name}: no such source in data (sources: {sorted(sources)})")
            for loss in losses:
                if loss not in LOSSES:
                    raise ConfigError(f"iv2_stage2.sources.{name}: unknown loss {loss!r} (losses: {list(LOSSES)})")
        unknown = set(cfg.captions) - set(LOSSES) - {"default"}
        if unknown or "default" not in cfg.captions or not all(cfg.captions.values()):
            raise ConfigError(f"iv2_stage2.captions: give `default` and any of {list(LOSSES)}, each a non-empty "
                              f"list of caption kinds (got {sorted(cfg.captions)})")
        if any(weights[a] for a in AV_LOSSES) and (not cfg.audio.path or cfg.av_concat_dim <= 0):
            raise ConfigError("iv2_stage2: the audio-visual losses need audio.path (a BEATs checkpoint) and "
                              "av_concat_dim > 0")
        if not cfg.text.path:
            raise ConfigError("iv2_stage2.text.path: a local BERT directory is required")
        for what, m in (("video_mask", cfg.vision.video_mask), ("image_mask", cfg.vision.image_mask)):
            if not 0.0 <= m.ratio < 1.0:
                raise ConfigError(f"iv2_stage2.vision.{what}.ratio must be in [0, 1), got {m.ratio}")
        if not 0 < cfg.temp_min <= cfg.temp <= cfg.temp_max:
            raise ConfigError("iv2_stage2: need 0 < temp_min <= temp <= temp_max")
        try:
            vision_config(cfg, recipe)
        except ValueError as e:
            raise ConfigError(f"iv2_stage2.vision.model: {e}") from None

    def __init__(self, recipe: Recipe, device: torch.device, dist=None):
        super().__init__(recipe, device, dist)
        from ivtrain.objectives.iv2_stage2_build import build_model

        cfg = recipe.section
        self.tokenizer = load_tokenizer(cfg.text.tokenizer or cfg.text.path)
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer {cfg.text.tokenizer or cfg.text.path} has no mask token: MLM needs one")
        self.trainable, reports = build_model(recipe, device, self.dist, load_init=True)
        if self.dist.rank == 0:
            for line in reports:
                print(line, flush=True)
        kinds = {loss: tuple(cfg.captions.get(loss) or cfg.captions["default"]) for loss in LOSSES}
        self.caption_names = {k: f"caption{i}" for i, k in enumerate(dict.fromkeys(kinds.values()))}
        self.loss_captions = {loss: self.caption_names[kinds[loss]] for loss in LOSSES}

    # ------------------------------------------------------------------ what each source delivers
    def losses_of(self, source: str) -> dict[str, tuple[str, float]]:
        """{loss: (caption output, weight)} of the losses `source`'s batches feed (weights of 0 left out)."""
        cfg = self.recipe.section
        weights = dataclasses.asdict(cfg.loss)
        names = cfg.sources.get(source, ["vtc", "vtm", "mlm"])
        return {n: (self.loss_captions[n], weights[n]) for n in names if weights[n]}

    def _spec(self, captions: dict[str, bool], audio: bool) -> SampleSpec:
        cfg, data = self.recipe.section, self.recipe.data
        tokenizer = cfg.text.tokenizer or cfg.text.path
        kinds = {name: k for k, name in self.caption_names.items()}
        return SampleSpec(video=VideoSpec(frames=data.num_frames, size=data.image_size), images=True,
                          audio=AudioSpec(seconds=cfg.audio.seconds, num_mel_bins=cfg.audio.num_mel_bins)
                          if audio else None,
                          captions=tuple((n, CaptionSpec(kinds[n], tokenizer, cfg.text.max_length, required))
                                         for n, required in captions.items()))

    def sample_spec(self) -> SampleSpec:
        """Per source: the captions its losses read (required) and, for the AV losses, the audio (required)."""
        by_source = []
        for s in self.recipe.data.source_list():
            losses = self.losses_of(s.name)
            by_source.append((s.name, self._spec({c: True for c, _ in losses.values()},
                                                 any(n in AV_LOSSES for n in losses))))
        fallback = self._spec({n: False for n in self.caption_names.values()}, False)
        return replace(fallback, by_source=tuple(by_source))

    def towers(self) -> list[Tower]:
        return [Tower(""), Tower("vision_encoder."), Tower("text_encoder.")]

    # ------------------------------------------------------------------ a batch -> the module's inputs
    @torch.no_grad()
    def prepare(self, batch: dict) -> dict:
        from ivtrain.objectives.iv2_stage2_build import pad_rows, padded_text, stage2_audio

        cfg, data, dist = self.recipe.section, self.recipe.data, self.dist
        size, n = batch["size"], data.batch_size
        losses = self.losses_of(batch["source"])
        video = normalize(pad_rows(batch["video"], n).to(self.device, non_blocking=True), data.mean, data.std)
        frames = pad_rows(batch["frames"], n).to(self.device)
        seeds = [int(s) for s in batch["clip_seeds"]] + [int(batch["clip_seeds"][0])] * (n - size)
        valid = torch.arange(n, device=self.device) < size
        meta = batch["meta"]
        identity = [(meta["source"][i], meta["source_id"][i] if meta["source_id"][i] is not None else batch["keys"][i])
                    for i in range(size)] + [None] * (n - size)
        longest = max(self.tokens_per_clip(t) for t in frames.tolist())
        every = dist.all_gather_objects([(identity, seeds, size, longest)])
        identity_all = [x for ids, _, _, _ in every for x in ids]
        seeds_all = [s for _, ss, _, _ in every for s in ss]
        valid_all = torch.tensor([i < k for _, _, k, _ in every for i in range(n)], device=self.device)
        text = {name: padded_text(batch["captions"][name], n, cfg.text.max_length, self.tokenizer, self.device)
                for name in {c for c, _ in losses.values()}}
        mlm = {}
        for loss in ("mlm", "avmlm"):
            if loss in losses:
                ids = text[losses[loss][0]][0].cpu()
                pairs = [mlm_mask(ids[i], (seeds[i] ^ MLM_SALT[loss]) & (2**63 - 1), cfg.loss.mlm_prob,
                                  (self.tokenizer.pad_token_id, self.tokenizer.cls_token_id),
                                  self.tokenizer.mask_token_id, len(self.tokenizer)) for i in range(n)]
                mlm[loss] = (torch.stack([p[0] for p in pairs]).to(self.device),
                             torch.stack([p[1] for p in pairs]).to(self.device), losses[loss][0])
        inputs = {"video": video, "frames": frames, "visible": self._mask(frames, seeds),
                  "vision_length": max(x[3] for x in every), "valid": valid,
                  "text": text, "mlm": mlm, "positives": same_identity(identity, identity_all).to(self.device)
                  & valid[:, None], "valid_all": valid_all, "seeds": seeds, "seeds_all": seeds_all, "losses": losses}
        if any(name in AV_LOSSES for name in losses):
            inputs["audio"] = stage2_audio(batch, n, cfg.audio, self.device)
        return inputs

    def tokens_per_clip(self, frames: int) -> int:
        """Vision tokens the encoder keeps of a clip of `frames` frames (CLS included)."""
        cfg, enc = self.recipe.section, self.trainable.vision_encoder
        m = cfg.vision.image_mask if frames == 1 else cfg.vision.video_mask
        return 1 + visible_per_frame(enc.grid[1] * enc.grid[2], m.ratio) * frames

    def _mask(self, frames: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """(B, T*HW) visible tokens: per group of equal frame count, the image or the video mask of each clip's
        seed (an image's row uses its first HW entries)."""
        cfg, enc = self.recipe.section, self.trainable.vision_encoder
        t_max, h, w = enc.grid
        visible = torch.zeros(len(seeds), t_max * h * w, dtype=torch.bool, device=self.device)
        for t in frames.unique().tolist():
            rows = (frames == t).nonzero().squeeze(1)
            m = cfg.vision.image_mask if t == 1 else cfg.vision.video_mask
            group = make_mask(m.type, m.ratio, len(rows), t, h * w, device=self.device,
                              seeds=[seeds[i] for i in rows.tolist()])
            visible[rows, :t * h * w] = group
        return visible

    # ------------------------------------------------------------------ accounting
    def flops(self, batch: dict) -> dict[str, float]:
        from ivtrain.objectives.iv2_stage2_build import batch_flops

        return batch_flops(self, batch)

    def count(self, batch: dict) -> int:
        """Tokens: the vision tokens the encoder ran on plus the caption tokens."""
        vision = sum(self.tokens_per_clip(t) - 1 for t in batch["frames"].tolist())
        return int(vision + sum(int(c["mask"].sum()) for c in batch["captions"].values() if "mask" in c))

    def export(self, state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """`encoder`: the vision tower under ivkit's names (probe, feature export, later stages); `stage2`: the
        whole model in the released stage-2 layout (ivtrain.stage2_layout)."""
        from ivtrain.stage2_layout import to_released

        prefix = "vision_encoder."
        encoder = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        cfg = self.recipe.section
        temp = state_dict["temp"].clamp(cfg.temp_min, cfg.temp_max)   # the value the last step used
        return {"encoder": encoder, "stage2": to_released(state_dict, temp)}

    def encoder_config(self) -> dict:
        data = self.recipe.data
        return {**self.trainable.vision_encoder.config(), "mean": data.mean, "std": data.std}

    @classmethod
    def encoder_config_of(cls, recipe: Recipe) -> dict:
        from ivtrain.objectives.iv2_stage2_build import pool_dim_of

        vit = vision_config(recipe.section, recipe)
        return {**dataclasses.asdict(vit), "pool_out_dim": pool_dim_of(recipe.section.vision, vit),
                "mean": recipe.data.mean, "std": recipe.data.std}

    @classmethod
    def write_tiny_assets(cls, out) -> dict[str, str]:
        """The tiny recipe's text tower (a BERT of 4 layers, 48 wide, with a word-piece tokenizer) and audio tower
        (a BEATs of 2 layers in the released file layout), randomly initialized."""
        from ivtrain.models.audio import save_tiny_beats
        from ivtrain.tiny_teachers import save_tiny_bert

        out = Path(out)
        return {"tiny_bert": str(save_tiny_bert(out / "tiny_bert")), "tiny_beats": str(save_tiny_beats(out / "tiny_beats"))}
