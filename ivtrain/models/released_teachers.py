"""Teacher directories from the two checkpoints InternVideo2 stage 1 was released with (`iv convert-teacher`):
InternVL-C's vision tower with its pooling head (ivtrain.models.internvit) and the VideoMAE V2-g pretraining encoder
(ivtrain.models.videomae_v2). This module holds what both conversions share: architecture settings, reading a
released checkpoint, the strict shape check against a model built on the meta device (no memory for the weights),
and writing the directory atomically.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from ivtrain.convert import ConversionError, ShapeReport, unwrap

# InternVL-C and VideoMAE V2 both take ImageNet-normalized pixels (InternVideo2's stage-1 loader feeds them so)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS = "model.safetensors"
TEACHER_CONFIG = "teacher.json"


def _check_arch(arch) -> None:
    bad = [f.name for f in fields(arch) if isinstance(getattr(arch, f.name), int) and getattr(arch, f.name) <= 0]
    if bad:
        raise ConversionError(f"architecture sizes must be positive: {', '.join(bad)}")
    if getattr(arch, "mlp_act", "gelu") not in ("gelu", "gelu_tanh"):
        raise ConversionError(f"mlp_act must be gelu or gelu_tanh, got {arch.mlp_act!r}")


def with_overrides(arch, settings: list[str]):
    """`key=value` strings -> a copy of `arch` with those fields changed (other sizes than the released one)."""
    kinds = {f.name: type(getattr(arch, f.name)) for f in fields(arch)}
    changes = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in kinds:
            raise ConversionError(f"bad architecture setting {item!r}: expected key=value with key one of "
                                  f"{', '.join(kinds)}")
        try:
            changes[key] = (tuple(float(x) for x in value.split(",")) if kinds[key] is tuple
                            else kinds[key](value))
        except ValueError:
            raise ConversionError(f"bad architecture setting {item!r}: not a {kinds[key].__name__}") from None
    arch = replace(arch, **changes)
    _check_arch(arch)
    return arch


def expected_shapes(arch) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in arch.build().state_dict().items()}


@dataclass
class Converted:
    state_dict: dict[str, torch.Tensor]   # the target model's names
    report: ShapeReport
    arch: object                          # InternViTArch | VideoMAEV2Arch


# ------------------------------------------------------------------ files

def kinds() -> dict:
    """teacher kind -> (its architecture class, its converter)."""
    from ivtrain.models.internvit import InternViTArch, convert_internvl_c
    from ivtrain.models.videomae_v2 import VideoMAEV2Arch, convert_videomae_v2

    return {"internvl-c": (InternViTArch, convert_internvl_c), "videomae-v2": (VideoMAEV2Arch, convert_videomae_v2)}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch file ({'module'|'model'|'state_dict': ...} or bare) or a .safetensors file,
    memory-mapped where the format allows (InternVL-C's file holds a 13B two-tower model; only the vision keys
    are read)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
        return unwrap(obj)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    except Exception as e:  # pickle, zip or safetensors errors: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(f"{path}: cannot read a checkpoint ({type(e).__name__}: {first})") from None


def mismatch_line(kind: str, report: ShapeReport) -> str:
    """One line for a conversion that does not fit: the counts and the first problem."""
    first = (f"shape mismatch {report.mismatched[0][0]}: checkpoint {list(report.mismatched[0][1])} vs model "
             f"{list(report.mismatched[0][2])}" if report.mismatched else
             f"missing {report.missing[0]}" if report.missing else f"not in model {report.unexpected[0]}")
    return (f"the checkpoint does not fit {kind} ({len(report.mismatched)} mis-shaped, {len(report.missing)} "
            f"missing, {len(report.unexpected)} unexpected keys); first: {first}")


def write_teacher(converted: Converted, out: Path, source: Path) -> None:
    """Write the teacher directory under a temporary name, then rename it into place."""
    from safetensors.torch import save_file

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.contiguous() for k, v in converted.state_dict.items()}
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    converted.arch.write_config(tmp, source)
    if out.exists():
        out.rmdir()  # empty (checked before converting)
    tmp.rename(out)


def convert_teacher(source: str | Path, out: str | Path, kind: str, settings: list[str] = ()) -> Converted:
    """Released checkpoint `source` -> teacher directory `out` (created; an existing non-empty one is refused)."""
    source, out = Path(source), Path(out)
    known = kinds()
    if kind not in known:
        raise ConversionError(f"unknown teacher kind {kind!r} ({' | '.join(known)})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} exists and is not an empty directory; choose another output")
    arch_cls, convert = known[kind]
    arch = with_overrides(arch_cls(), list(settings))
    converted = convert(read_checkpoint(source), arch)
    if not converted.report.ok:
        raise ConversionError(mismatch_line(kind, converted.report))
    write_teacher(converted, out, source)
    return converted
