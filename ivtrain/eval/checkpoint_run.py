"""A released InternVideo2 checkpoint as the encoder of a run directory, so that everything that reads a finished
run (feature export, the probe, `iv convert`) reads a released checkpoint the same way.

A checkpoint file (a released stage-1 `pretrain.pth` or stage-2 `vision_encoder.*` file, or safetensors written by
`iv convert`) holds weights, not the architecture: the size preset and frame count come from the user
(`--size 1b --frames 8`); the pooled width and whether there is an image position table come from the tensors;
the input normalization is the released one (ImageNet mean and std). The position table is resized when the
frame count differs from the checkpoint's (ivtrain.models.towers.load_vision_tower).
"""
from __future__ import annotations

from pathlib import Path

from ivtrain.config import DataConfig
from ivtrain.convert import ConversionError, detect_layout, load_checkpoint, to_ivkit
from ivtrain.export import write_export
from ivtrain.models.towers import load_vision_tower
from ivtrain.models.vit import InternVideo2, ViTConfig

POOL_WEIGHT = "clip_projector.cross_attn.proj.weight"


def encoder_from_checkpoint(path: str | Path, size: str, frames: int = 0, img_size: int = 0):
    """(the checkpoint's vision tower in eval mode, its run-style configuration with mean and std). Strict:
    raises ConversionError with the shape report when the weights do not fit the size."""
    sd, _ = to_ivkit(load_checkpoint(path), None)
    encoder_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    if not encoder_sd:
        raise ConversionError(f"{path} holds no video encoder weights ({detect_layout(sd)} layout)")
    pool_out = encoder_sd[POOL_WEIGHT].shape[0] if POOL_WEIGHT in encoder_sd else None
    cfg = ViTConfig(size=size, num_frames=frames, img_size=img_size, image_pos_embed="img_pos_embed" in encoder_sd,
                    attn_backend="sdpa")
    encoder = InternVideo2(cfg, pool_out_dim=pool_out)
    load_vision_tower(encoder, encoder_sd)
    data = DataConfig()
    return encoder.eval(), {**encoder.config(), "mean": list(data.mean), "std": list(data.std)}


def write_run_dir(path: str | Path, out: str | Path, size: str, frames: int = 0, img_size: int = 0) -> Path:
    """Write `out` as a finished run's export (export.json + encoder.safetensors) of the checkpoint's encoder."""
    encoder, config = encoder_from_checkpoint(path, size, frames, img_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_export(out, "released", {"encoder": encoder.state_dict()}, config)
