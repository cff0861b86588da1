"""Teacher directories from the two checkpoints InternVideo2 stage 1 was released with.

- InternVL-C (`internvl_c_13b_224px.pth`): its vision tower InternViT-6B (3200 wide, 48 blocks, 25 heads,
  MLP 12800, patch 14 at 224 px, RMSNorm, QK-norm over the full width, LayerScale, a learned position table
  with a CLS slot) and its attention-pooling head `clip_projector` (16 heads, out 768). That is ivkit's own
  InternVideo2 tower (ivtrain.models.vit) with one frame and tubelet 1, under the same parameter names, so
  the conversion keeps the vision keys (a Conv2d patch kernel gains its time axis) and reports the text
  tower's as unused. The directory holds `model.safetensors` and `teacher.json` (the architecture and
  InternVL's input normalization); `InternViTSemanticTeacher` (backend `internvit`) runs it as the release
  did: last-K block outputs per frame, the pooling head's head-averaged attention from its mean-token query
  to the patch tokens as the map that guides masking, the pooling head's output as the pooled target.
- VideoMAE V2-g (`mae_g14_hybrid`, the pretraining encoder: 1408 wide, 40 blocks, 16 heads, MLP 6144,
  patch 14, tubelet 2, 16 frames, q/v biases, final `norm`), in the pretraining layout (`encoder.*`, whose
  decoder keys are reported as unused) or plain: written as a transformers VideoMAE directory with
  use_mean_pooling off, so the final norm stays as `layernorm` and MotionTeacher loads it unchanged.
  transformers' VideoMAE has no LayerScale: blocks that carry gammas get them folded into the linear
  layer before each (gamma * (W x + b) = (gamma W) x + gamma b). Its fixed sin-cos table is the released
  one at the released grid (8 x 16 x 16); upstream interpolates that table for other grids, transformers
  does not, so other frame counts or sizes are not the released teacher.

Both conversions are strict against a model built on the meta device (no memory for the weights): every
key the target needs, with its exact shape, or a ConversionError naming what does not fit.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ivtrain.config import ViTConfig
from ivtrain.convert import ConversionError, ShapeReport, compare, unwrap
from ivtrain.models.teachers import InputNormalization, SemanticTeacher, _freeze
from ivtrain.models.vit import InternVideo2

# InternVL-C and VideoMAE V2 both take ImageNet-normalized pixels (InternVideo2's stage-1 loader feeds them so)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS = "model.safetensors"
TEACHER_CONFIG = "teacher.json"


# ------------------------------------------------------------------ architectures (released sizes as defaults)

@dataclass(frozen=True)
class InternViTArch:
    """InternVL-C's vision tower and pooling head; the defaults are the released InternViT-6B at 224 px."""
    image_size: int = 224
    patch_size: int = 14
    dim: int = 3200
    depth: int = 48
    heads: int = 25
    mlp_dim: int = 12800
    pool_heads: int = 16
    pool_out_dim: int = 768
    mlp_act: str = "gelu_tanh"   # the release ran the fused MLP, whose GELU is the tanh approximation
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def build(self) -> InternVideo2:
        """The tower as an InternVideo2 of one frame, tubelet 1 (on the current default device)."""
        # every field the size preset would fill is set, so the preset named does not matter
        cfg = ViTConfig(size="6b", img_size=self.image_size, patch_size=self.patch_size, num_frames=1,
                        tubelet_size=1, embed_dim=self.dim, depth=self.depth, num_heads=self.heads,
                        mlp_dim=self.mlp_dim, pool_heads=self.pool_heads, mlp_act=self.mlp_act,
                        train_pos_embed=False, attn_backend="sdpa")
        return InternVideo2(cfg, pool_out_dim=self.pool_out_dim)


@dataclass(frozen=True)
class VideoMAEV2Arch:
    """The VideoMAE V2 pretraining encoder; the defaults are the released ViT-g/14 (`mae_g14_hybrid`)."""
    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 16
    tubelet_size: int = 2
    dim: int = 1408
    depth: int = 40
    heads: int = 16
    mlp_dim: int = 6144
    layer_norm_eps: float = 1e-6
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def hf_config(self):
        from transformers import VideoMAEConfig

        return VideoMAEConfig(image_size=self.image_size, patch_size=self.patch_size, num_frames=self.num_frames,
                              tubelet_size=self.tubelet_size, hidden_size=self.dim, num_hidden_layers=self.depth,
                              num_attention_heads=self.heads, intermediate_size=self.mlp_dim, hidden_act="gelu",
                              layer_norm_eps=self.layer_norm_eps, qkv_bias=True,
                              use_mean_pooling=False,  # keeps the final norm, as `layernorm`
                              architectures=["VideoMAEModel"])

    def build(self):
        from transformers import VideoMAEModel

        return VideoMAEModel(self.hf_config())


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


def _expected(arch) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in arch.build().state_dict().items()}


@dataclass
class Converted:
    state_dict: dict[str, torch.Tensor]   # the target model's names
    report: ShapeReport
    arch: InternViTArch | VideoMAEV2Arch


# ------------------------------------------------------------------ InternVL-C -> semantic teacher

INTERNVIT_ROOTS = ("patch_embed.", "pos_embed", "cls_token", "blocks.", "clip_projector.")


def convert_internvl_c(sd: dict[str, torch.Tensor], arch: InternViTArch = InternViTArch()) -> Converted:
    """Released InternVL-C state dict -> ivkit InternVideo2 names (vision tower + pooling head)."""
    vision = {k: v for k, v in sd.items() if k.startswith(INTERNVIT_ROOTS)}
    unused = sorted(k for k in sd if k not in vision)
    kernel = vision.get("patch_embed.proj.weight")
    if kernel is not None and kernel.dim() == 4:  # InternViT's Conv2d kernel -> a Conv3d kernel of depth 1
        vision["patch_embed.proj.weight"] = kernel.unsqueeze(2)
    report = compare(vision, _expected(arch))
    report.unused = unused
    return Converted(vision, report, arch)


def read_internvit_dir(path: Path) -> InternViTArch:
    config = path / TEACHER_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{path} has no {TEACHER_CONFIG}: not a teacher directory written by "
                                "`iv convert-teacher --kind internvl-c`")
    raw = json.loads(config.read_text())
    known = {f.name for f in fields(InternViTArch)}
    arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
    return InternViTArch(**arch)


class InternViTSemanticTeacher(SemanticTeacher):
    """A converted InternVL-C vision tower, run per frame as InternVideo2's stage 1 ran it: last-K block outputs,
    the pooling head's output as the pooled feature, and the pooling head's attention from its mean-token query
    to the patch tokens (averaged over heads) as the map that guides masking."""

    def __init__(self, path: str | Path, num_layers: int, data_norm=None):
        super().__init__()
        from safetensors.torch import load_file

        path = Path(path)
        arch = read_internvit_dir(path)
        with torch.device("meta"):  # no memory for a random init: the weights are assigned below
            encoder = arch.build()
        weights = load_file(str(path / WEIGHTS))
        report = compare(weights, {k: v.shape for k, v in encoder.state_dict().items()})
        if not report.ok:
            raise ConversionError(f"{path / WEIGHTS} does not fit {TEACHER_CONFIG}:\n{report}")
        encoder.load_state_dict(weights, strict=True, assign=True)
        self.encoder = _freeze(encoder)
        self.image_size, self.patch_size = arch.image_size, arch.patch_size
        self.hidden_size, self.depth, self.mlp_size = arch.dim, arch.depth, arch.mlp_dim
        self._check_layers(num_layers)
        self.has_cls = True
        self.pooled_dim = arch.pool_out_dim
        self.input_norm = InputNormalization(data_norm, (list(arch.image_mean), list(arch.image_std)))

    def encode_images(self, images):
        x = self.encoder.embed(images.unsqueeze(2))  # (N, 1 + P, C): one frame each
        first = self.depth - self.num_layers
        layers = []
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i >= first:
                layers.append(x)
        pooled, attention = self.encoder.clip_projector(x, return_attention=True)  # attention: (N, 1 + P)
        return torch.stack(layers), attention[:, 1:], pooled

    def flops_per_sample(self, frames: int) -> float:
        return frames * self.encoder.flops_per_sample()  # blocks, patch embedding and the pooling head


# ------------------------------------------------------------------ VideoMAE V2 -> motion teacher

VIDEOMAE_ROOTS = ("patch_embed.", "pos_embed", "blocks.", "norm.")
# released block names -> transformers VideoMAE layer names (qkv, q/v biases and gammas are handled apart)
VIDEOMAE_BLOCK = {
    "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
    "attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias",
    "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "intermediate.dense.weight", "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight", "mlp.fc2.bias": "output.dense.bias",
}
# the residual branch each LayerScale gamma scales, by the linear layer that ends it
VIDEOMAE_GAMMA = {"gamma_1": "attention.output.dense", "gamma_2": "output.dense"}


def fold_layer_scale(weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """gamma * (W x + b) == (gamma[:, None] W) x + gamma b; computed in float64, returned in the weights' dtype."""
    g = gamma.double()
    return (g[:, None] * weight.double()).to(weight.dtype), (g * bias.double()).to(bias.dtype)


def convert_videomae_v2(sd: dict[str, torch.Tensor], arch: VideoMAEV2Arch = VideoMAEV2Arch()) -> Converted:
    """Released VideoMAE V2 encoder (pretraining layout `encoder.*`, or plain) -> transformers VideoMAEModel names."""
    expected, table = _videomae_target(arch)
    if any(k.startswith("encoder.") for k in sd):
        inner = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        unused = [k for k in sd if not k.startswith("encoder.")]
    else:
        inner, unused = dict(sd), []
    unused += [k for k in inner if not k.startswith(VIDEOMAE_ROOTS)]
    # transformers 4.x names the q/v biases `q_bias`/`v_bias`, 5.x folds them into `query.bias`/`value.bias`
    legacy = "encoder.layer.0.attention.attention.q_bias" in expected
    qv_bias = {"attn.q_bias": "attention.attention." + ("q_bias" if legacy else "query.bias"),
               "attn.v_bias": "attention.attention." + ("v_bias" if legacy else "value.bias")}

    out, gammas = {}, {}
    for key, value in inner.items():
        if not key.startswith(VIDEOMAE_ROOTS):
            continue
        if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key in ("norm.weight", "norm.bias"):
            out["layernorm." + key.rsplit(".", 1)[1]] = value
        elif key == "pos_embed":
            _check_fixed_table(value, table)
            unused.append(key)  # transformers computes the same table itself
        elif key.startswith("blocks."):
            _, index, name = key.split(".", 2)
            prefix = f"encoder.layer.{index}."
            if name == "attn.qkv.weight":
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{prefix}attention.attention.{part}.weight"] = chunk.clone()  # no storage shared
            elif name in qv_bias:
                out[prefix + qv_bias[name]] = value
            elif name in VIDEOMAE_GAMMA:
                gammas[prefix + VIDEOMAE_GAMMA[name]] = value
            else:  # an unknown block key keeps its name, so the report lists it as not in the model
                out[prefix + VIDEOMAE_BLOCK.get(name, name)] = value
        else:
            out[key] = value
    for linear, gamma in gammas.items():
        if f"{linear}.weight" in out and f"{linear}.bias" in out:  # (when not, the report names them missing)
            out[f"{linear}.weight"], out[f"{linear}.bias"] = fold_layer_scale(out[f"{linear}.weight"],
                                                                              out[f"{linear}.bias"], gamma)
    report = compare(out, expected)
    report.unused = sorted(unused)
    return Converted(out, report, arch)


@functools.lru_cache(maxsize=2)
def _videomae_target(arch: VideoMAEV2Arch) -> tuple[dict[str, torch.Size], torch.Tensor]:
    """The target's key shapes and its fixed position table (transformers builds that table in a Python loop,
    seconds at the released size: built once per architecture)."""
    with torch.device("meta"):
        model = arch.build()
    return {k: v.shape for k, v in model.state_dict().items()}, model.embeddings.position_embeddings


def _check_fixed_table(value: torch.Tensor, table: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(table.shape):
        raise ConversionError(f"pos_embed {list(value.shape)} is not transformers' fixed table {list(table.shape)}")
    if value.device.type != "meta" and not torch.allclose(value.float().cpu(), table, atol=1e-4):
        raise ConversionError("pos_embed is not the sin-cos table transformers' VideoMAE uses (a learned table?)")


# ------------------------------------------------------------------ files

KINDS = {"internvl-c": (InternViTArch, convert_internvl_c), "videomae-v2": (VideoMAEV2Arch, convert_videomae_v2)}


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
    arch = converted.arch
    if isinstance(arch, InternViTArch):
        config = {"backend": "internvit", "converted_from": source.name, **asdict(arch)}
        (tmp / TEACHER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    else:
        arch.hf_config().save_pretrained(tmp)
        # what MotionTeacher reads to convert the data's normalization to the teacher's
        (tmp / "preprocessor_config.json").write_text(json.dumps(
            {"image_processor_type": "VideoMAEImageProcessor", "image_mean": list(arch.image_mean),
             "image_std": list(arch.image_std)}, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty (checked before converting)
    tmp.rename(out)


def convert_teacher(source: str | Path, out: str | Path, kind: str, settings: list[str] = ()) -> Converted:
    """Released checkpoint `source` -> teacher directory `out` (created; an existing non-empty one is refused)."""
    source, out = Path(source), Path(out)
    if kind not in KINDS:
        raise ConversionError(f"unknown teacher kind {kind!r} ({' | '.join(KINDS)})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} exists and is not an empty directory; choose another output")
    arch_cls, convert = KINDS[kind]
    arch = with_overrides(arch_cls(), list(settings))
    converted = convert(read_checkpoint(source), arch)
    if not converted.report.ok:
        raise ConversionError(mismatch_line(kind, converted.report))
    write_teacher(converted, out, source)
    return converted
