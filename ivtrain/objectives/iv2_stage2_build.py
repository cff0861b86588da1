"""Stage 2's model built from a recipe (training, evaluation and the released-layout tests share it), the batch
shaping its `prepare` does, and its FLOPs.

The vision tower's initialization (`vision.init`) may be a finished ivkit run (its `encoder` export, at the grid
its export.json records), or a checkpoint file: ivkit safetensors (`iv convert`), a released stage-1 pretrain.pth,
or a released stage-2 file (its `vision_encoder.*`). It loads strictly (ivtrain.models.towers.load_vision_tower:
position tables resized to this recipe's frames, the image table started from sin-cos when the source has none).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ivtrain.convert import ShapeReport, load_checkpoint, to_ivkit
from ivtrain.models.text import FusionBert, load_text_tower, new_weights_summary
from ivtrain.models.vit import InternVideo2, ViTConfig

POOL_WEIGHT = "clip_projector.cross_attn.proj.weight"


def vision_source(init: str) -> tuple[dict[str, torch.Tensor], tuple | None, list[str]]:
    """(encoder state dict under ivkit's names, its grid when known, source keys outside the encoder)."""
    path = Path(init)
    if path.is_dir():
        from ivtrain.export import encoder_grid, load_artifact, read_export

        return load_artifact(path, "encoder"), encoder_grid(read_export(path)["encoder"]), []
    if not path.is_file():
        raise FileNotFoundError(f"vision.init {init}: no such run directory or checkpoint file")
    converted, unused = to_ivkit(load_checkpoint(path))
    encoder = {k[len("encoder."):]: v for k, v in converted.items() if k.startswith("encoder.")}
    return encoder, None, unused + sorted(k for k in converted if not k.startswith("encoder."))


def pool_dim_of(vision_cfg, vit: ViTConfig) -> int:
    """The pooled width: the recipe's, else the initialization's pooling head's, else the tower's width."""
    if vision_cfg.pool_dim:
        return vision_cfg.pool_dim
    if vision_cfg.init:
        sd, _, _ = vision_source(vision_cfg.init)
        if POOL_WEIGHT in sd:
            return int(sd[POOL_WEIGHT].shape[0])
    return vit.embed_dim


def load_vision_init(encoder: InternVideo2, init: str) -> ShapeReport:
    from ivtrain.models.towers import load_vision_tower

    sd, grid, unused = vision_source(init)
    report = load_vision_tower(encoder, sd, source_grid=grid)
    report.unused += unused
    return report


def build_model(recipe, device: torch.device, dist, load_init: bool = True):
    """(Stage2Model, report lines). load_init False builds the same architecture without reading the vision
    initialization or the text tower's weights (an evaluation then loads a finished run's weights into it)."""
    from transformers import AutoConfig

    from ivtrain.models.audio import load_beats
    from ivtrain.objectives.iv2_stage2 import vision_config
    from ivtrain.objectives.iv2_stage2_model import Stage2Model

    cfg = recipe.section
    vit = vision_config(cfg, recipe)
    encoder = InternVideo2(vit, pool_out_dim=pool_dim_of(cfg.vision, vit), device=device)
    reports = []
    if load_init and cfg.vision.init:
        report = load_vision_init(encoder, cfg.vision.init)
        reports.append(f"vision tower from {cfg.vision.init}: " + "; ".join(str(report).splitlines()))
    cross = cfg.av_concat_dim or vit.embed_dim
    if load_init:
        text, new = load_text_tower(cfg.text.path, cfg.text.fusion_layer, cross)
        if new:
            reports.append(f"text tower from {cfg.text.path}: newly initialized (not in the directory): "
                           f"{new_weights_summary(new)}; names: {compact_names(new)}")
    else:
        text = FusionBert(AutoConfig.from_pretrained(cfg.text.path), cfg.text.fusion_layer, cross)
    audio = None
    if cfg.audio.path:
        audio, _ = load_beats(cfg.audio.path)
    model = Stage2Model(encoder, text, cfg.embed_dim, cfg.temp, (cfg.temp_min, cfg.temp_max), dist, audio,
                        cfg.av_concat_dim, cfg.loss.vtm_negatives)
    return model.to(device), reports


def compact_names(names: list[str]) -> str:
    """'bert.encoder.layer.{2,3}.crossattention.*'-style: the modules the names belong to, layers folded."""
    groups: dict[str, list[str]] = {}
    for n in names:
        parts = n.split(".")
        if ".layer." in n:
            i = parts.index("layer")
            key = ".".join(parts[:i + 1]) + ".{}." + parts[i + 2]
            groups.setdefault(key, []).append(parts[i + 1])
        else:
            groups.setdefault(n, [])
    return ", ".join(k.format("{" + ",".join(sorted(set(v), key=int)) + "}") + ".*" if v else k
                     for k, v in groups.items())


# ---------------------------------------------------------------- batch shaping (prepare)
def pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """x with rows appended (copies of row 0) up to n: every rank's batch has the same shape for the gathers."""
    if len(x) >= n:
        return x
    return torch.cat([x, x[:1].expand(n - len(x), *x.shape[1:])])


def padded_text(entry: dict, n: int, length: int, tokenizer, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of a caption output padded to `length` tokens and n rows."""
    ids, mask = entry["ids"], entry["mask"]
    extra = length - ids.shape[1]
    ids = F.pad(ids, (0, extra), value=tokenizer.pad_token_id)
    mask = F.pad(mask, (0, extra), value=False)
    return pad_rows(ids, n).to(device), pad_rows(mask, n).to(device)


def audio_frames(seconds: float, sample_rate: int = 16000) -> int:
    """Kaldi fbank frames (25 ms windows every 10 ms) of `seconds` of audio: 998 for 10 s."""
    return 1 + (int(round(seconds * sample_rate)) - 400) // 160


@torch.no_grad()
def stage2_audio(batch: dict, n: int, audio_cfg, device) -> torch.Tensor:
    """(n, frames, bins): the batch's fbank normalized as released, zero where the clip has ended, padded to the
    frames of `audio.seconds`."""
    from ivtrain.models.audio import normalize_fbank

    fbank = normalize_fbank(batch["audio"]) * batch["audio_mask"].unsqueeze(-1)
    frames = audio_frames(audio_cfg.seconds)
    fbank = F.pad(fbank[:, :frames], (0, 0, 0, max(0, frames - fbank.shape[1])))
    return pad_rows(fbank, n).to(device)


def batch_flops(objective, batch: dict) -> dict[str, float]:
    """Training FLOPs of this batch: vision, text (text layers of each caption, and the masked captions), fusion
    (matching rows and masked captions through the fusion layers) forward + backward (3x); audio forward."""
    from ivtrain.data.masking import visible_per_frame
    from ivtrain.objectives.iv2_stage2_model import AV_LOSSES

    cfg, model = objective.recipe.section, objective.trainable
    enc, text = model.vision_encoder, model.text_encoder
    hw = enc.grid[1] * enc.grid[2]
    losses = objective.losses_of(batch["source"])
    vision, tokens = 0.0, []
    for t in batch["frames"].tolist():
        n = visible_per_frame(hw, (cfg.vision.image_mask if t == 1 else cfg.vision.video_mask).ratio) * t
        vision += enc.flops_per_sample(n)
        tokens.append(n + 1)
    length, depth = cfg.text.max_length, text.config.num_hidden_layers
    text_layers = range(text.fusion_layer)
    fusion_layers = range(text.fusion_layer, depth)
    vis = max(tokens)
    size = batch["size"]
    text_f = len({c for c, _ in losses.values()}) * size * text.flops(length, vis, text_layers)
    fusion_f = 0.0
    audio_f = 0.0
    if any(k in AV_LOSSES for k in losses):
        frames = audio_frames(cfg.audio.seconds)
        audio_f = size * model.audio_encoder.flops(frames, cfg.audio.num_mel_bins)
        vis_av = vis + model.audio_encoder.tokens_of(frames, cfg.audio.num_mel_bins)
    for name in losses:
        media = vis_av if name in AV_LOSSES else vis
        if name.endswith("tm"):
            fusion_f += 3 * size * text.flops(length, media, fusion_layers)
        elif name.endswith("mlm"):
            text_f += size * text.flops(length, media, text_layers)
            fusion_f += size * text.flops(length, media, fusion_layers)
    return {"vision": 3.0 * vision, "text": 3.0 * text_f, "fusion": 3.0 * fusion_f, "audio": audio_f}
