"""The VideoMAE V2-g pretraining encoder (`mae_g14_hybrid`: 1408 wide, 40 blocks, 16 heads, MLP 6144, patch 14,
tubelet 2, 16 frames, q/v biases, final `norm`), the motion teacher of InternVideo2 stage 1, as a transformers
VideoMAE directory.

The released checkpoint comes in the pretraining layout (`encoder.*`, whose decoder keys are reported as unused)
or plain. It is written with use_mean_pooling off, so the final norm stays as `layernorm` and MotionTeacher loads
it unchanged. transformers' VideoMAE has no LayerScale: blocks that carry gammas get them folded into the linear
layer before each (gamma * (W x + b) = (gamma W) x + gamma b). Its fixed sin-cos table is the released one at
the released grid (8 x 16 x 16); upstream interpolates that table for other grids, transformers does not, so
other frame counts or sizes are not the released teacher.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ivtrain.convert import ConversionError, compare
from ivtrain.models.released_teachers import IMAGENET_MEAN, IMAGENET_STD, Converted


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

    def write_config(self, directory: Path, source: Path) -> None:
        self.hf_config().save_pretrained(directory)
        # what MotionTeacher reads to convert the data's normalization to the teacher's
        (directory / "preprocessor_config.json").write_text(json.dumps(
            {"image_processor_type": "VideoMAEImageProcessor", "image_mean": list(self.image_mean),
             "image_std": list(self.image_std)}, indent=2) + "\n")


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
