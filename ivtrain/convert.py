"""Key maps between ivkit weights and the released InternVideo2 checkpoint layouts.

Layouts
- "ivkit":  the stage-1 trainable module (ivtrain.objectives.iv2_stage1.Stage1Student):
            `encoder.{patch_embed,cls_token,pos_embed,blocks,clip_projector}.*`, plus the heads
            `clip_pos_embed`, `mae_pos_embed`, `clip_decoder.*`, `final_clip_decoder.*`, `mae_decoder.*`.
- "stage1": the released stage-1 `pretrain.pth` style: the same names with the encoder at top level
            (`blocks.*`, `patch_embed.*`, ..., `clip_decoder.*`, `mae_decoder.*`).
- "stage2": the released stage-2 style: the video encoder under `vision_encoder.` (other towers
            such as text encoders are not part of this trainer and are reported as unused).
- InternVideo2-Chat (stage 3): the stage-3 model's own names (`load_released_chat`).

Loading is strict: every key the target needs must be present with its exact shape, and the
report names every missing, unexpected and mis-shaped key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

ENCODER_ROOTS = ("patch_embed.", "cls_token", "pos_embed", "img_pos_embed", "blocks.", "clip_projector.")
HEAD_ROOTS = ("clip_pos_embed", "mae_pos_embed", "clip_decoder.", "final_clip_decoder.", "mae_decoder.")


class ConversionError(ValueError):
    pass


def _is_encoder_key(key: str) -> bool:
    return key.startswith(ENCODER_ROOTS) and not key.startswith(HEAD_ROOTS)


def unwrap(obj) -> dict[str, torch.Tensor]:
    """A state dict from a loaded checkpoint object ({'model': ...}, {'module': ...}, DDP 'module.' keys)."""
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError("not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (.safetensors, or a torch file loaded weights-only), or from a finished run dir:
    its encoder (as encoder.*) and, where the objective exports them, its stage-1 heads, in ivkit's layout."""
    path = Path(path)
    if path.is_dir():
        from ivtrain.export import load_artifact, read_export

        artifacts = read_export(path)["artifacts"]
        sd = {f"encoder.{k}": v for k, v in load_artifact(path, "encoder").items()}
        return {**sd, **(load_artifact(path, "heads") if "heads" in artifacts else {})}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return unwrap(torch.load(path, map_location="cpu", weights_only=True))


def detect_layout(sd: dict) -> str:
    if any(k.startswith("vision_encoder.") for k in sd):
        return "stage2"
    if any(k.startswith("encoder.") for k in sd):
        return "ivkit"
    if any(k.startswith("blocks.") for k in sd):
        return "stage1"
    raise ConversionError("unrecognized layout: no encoder.*, blocks.* or vision_encoder.* keys")


def to_ivkit(sd: dict, layout: str | None = None) -> tuple[dict, list[str]]:
    """(state dict in ivkit names, keys of the source that have no ivkit counterpart)."""
    layout = layout or detect_layout(sd)
    out, unused = {}, []
    for key, value in sd.items():
        if layout == "ivkit":
            out[key] = value
        elif layout == "stage1":
            if _is_encoder_key(key):
                out["encoder." + key] = value
            elif key.startswith(HEAD_ROOTS):
                out[key] = value
            else:
                unused.append(key)
        elif layout == "stage2":
            if key.startswith("vision_encoder."):
                inner = key[len("vision_encoder."):]
                if _is_encoder_key(inner):
                    out["encoder." + inner] = value
                elif inner.startswith(HEAD_ROOTS):
                    out[inner] = value
                else:
                    unused.append(key)
            else:
                unused.append(key)
        else:
            raise ConversionError(f"unknown layout {layout!r}")
    return out, unused


def from_ivkit(sd: dict, layout: str) -> dict:
    """ivkit names -> a released layout (stage2 keeps only the encoder, as released)."""
    out = {}
    for key, value in sd.items():
        inner = key[len("encoder."):] if key.startswith("encoder.") else key
        if layout == "ivkit":
            out[key] = value
        elif layout == "stage1":
            out[inner] = value
        elif layout == "stage2":
            if key.startswith("encoder."):
                out["vision_encoder." + inner] = value
        else:
            raise ConversionError(f"unknown layout {layout!r}")
    return out


@dataclass
class ShapeReport:
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint, model
    unused: list[str] = field(default_factory=list)   # source keys outside this trainer (e.g. text towers)
    adapted: list[str] = field(default_factory=list)  # tensors made to fit, and how (position tables resized)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.matched} tensors match"] + [f"adapted: {a}" for a in self.adapted]
        for k, a, b in self.mismatched:
            lines.append(f"shape mismatch {k}: checkpoint {list(a)} vs model {list(b)}")
        lines += [f"missing from checkpoint: {k}" for k in self.missing]
        lines += [f"not in model: {k}" for k in self.unexpected]
        if self.unused:
            lines.append(f"{len(self.unused)} source keys outside this model (e.g. {self.unused[0]})")
        return "\n".join(lines)


def compare(sd: dict, expected: dict[str, torch.Size]) -> ShapeReport:
    report = ShapeReport()
    for key, shape in expected.items():
        if key not in sd:
            report.missing.append(key)
        elif tuple(sd[key].shape) != tuple(shape):
            report.mismatched.append((key, tuple(sd[key].shape), tuple(shape)))
        else:
            report.matched += 1
    report.unexpected = sorted(set(sd) - set(expected))
    return report


def load_released(module: nn.Module, sd: dict, layout: str | None = None, encoder_only: bool = False) -> ShapeReport:
    """Load a released (or ivkit) state dict into a Stage1Student, or with encoder_only into an InternVideo2.

    Strict: raises ConversionError with the shape report unless every needed key matches.
    """
    converted, unused = to_ivkit(sd, layout)
    if encoder_only:
        heads = [k for k in converted if not k.startswith("encoder.")]
        converted = {k[len("encoder."):]: v for k, v in converted.items() if k.startswith("encoder.")}
        unused += heads
    expected = {k: v.shape for k, v in module.state_dict().items()}
    report = compare(converted, expected)
    report.unused = unused
    if not report.ok:
        raise ConversionError("checkpoint does not fit the model:\n" + str(report))
    module.load_state_dict(converted, strict=True)
    return report


def export_released(module: nn.Module, layout: str, path: str | Path) -> Path:
    """Write the module's weights in a released layout as {'model': state_dict} (torch.save)."""
    sd = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"model": from_ivkit(sd, layout)}, path)
    return Path(path)


# ---------------------------------------------------------------- InternVideo2-Chat (stage 3)
CHAT_UNUSED = ("project_down.",)   # the released bridge back from the LLM to the QFormer: no chat output reads it


def chat_key(model_key: str, released: dict) -> str:
    """The released InternVideo2-Chat name of a stage-3 model key (ivtrain.models.videochat.VideoChat): the same
    names (`vision_encoder`, `vision_layernorm`, `qformer`, `query_tokens`, `extra_query_tokens`, `project_up`,
    `lm`), except that a checkpoint saved by a peft before `base_layer` existed names an adapted layer's own weight
    without it."""
    if model_key in released or ".base_layer." not in model_key:
        return model_key
    return model_key.replace(".base_layer.", ".")


def load_released_chat(model: nn.Module, sd: dict) -> ShapeReport:
    """Load a released InternVideo2-Chat state dict (vision tower, bridge, LLM with its adapters) into a stage-3
    model; strict, with the shape report (`project_down.*` reported unused)."""
    sd = unwrap(sd)
    names = {key: chat_key(key, sd) for key in model.state_dict()}
    given = {key: sd[name] for key, name in names.items() if name in sd}
    expected = {k: v.shape for k, v in model.state_dict().items()}
    report = compare(given, expected)
    report.unused = sorted(k for k in set(sd) - set(names.values()) if k.startswith(CHAT_UNUSED))
    report.unexpected = sorted(set(sd) - set(names.values()) - set(report.unused))
    if not report.ok:
        raise ConversionError("checkpoint does not fit the stage-3 model:\n" + str(report))
    model.load_state_dict(given, strict=True)
    return report
