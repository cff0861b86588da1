"""The released InternVideo2 stage-2 checkpoint layout, to and from the stage-2 model (ivtrain.objectives.iv2_stage2).

The model keeps the released names (`vision_encoder.*` with `img_pos_embed`, `text_encoder.bert.*` with
`crossattention` in the fusion layers only, `text_encoder.cls.*`, `vision_proj`, `text_proj`, `temp`, `itm_head`,
and with audio `audio_encoder.*`, `audio_proj`, `av_concat_audio_proj`, `av_concat_vision_proj`, `av_fusion`,
`avtm_head`), so the two layouts differ only where the release stores something the model does not hold as such:
- `temp` is a scalar in the release and shape (1,) here (DeepSpeed cannot broadcast 0-dim parameters);
- `text_encoder.cls.predictions.decoder.{weight,bias}` are BERT's masked-LM output, tied to the word embeddings and
  the prediction bias: written on export, checked to equal them on load;
- `text_encoder.bert.embeddings.position_ids` (BERT's persistent buffer 0..max positions - 1): written, checked;
- the release's vision encoder still carries its stage-1 alignment heads (`clip_decoder.*`, `final_clip_decoder.*`,
  `clip_pos_embed`, `clip_img_pos_embed`), which stage 2 neither trains nor uses: reported as unused on load.
Loading is strict otherwise: every tensor the model needs, with its exact shape; the report names the rest.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ivtrain.convert import ConversionError, ShapeReport, compare

WORDS = "text_encoder.bert.embeddings.word_embeddings.weight"
POSITIONS = "text_encoder.bert.embeddings.position_embeddings.weight"
POSITION_IDS = "text_encoder.bert.embeddings.position_ids"
BIAS = "text_encoder.cls.predictions.bias"
DECODER_WEIGHT = "text_encoder.cls.predictions.decoder.weight"
DECODER_BIAS = "text_encoder.cls.predictions.decoder.bias"
STAGE1_HEADS = tuple(f"vision_encoder.{k}" for k in ("clip_decoder.", "final_clip_decoder.", "clip_pos_embed",
                                                     "clip_img_pos_embed"))


def to_released(sd: dict[str, torch.Tensor], temp: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict in the released layout (temp: the value to store, e.g. the clamped one)."""
    out = dict(sd)
    out["temp"] = (sd["temp"] if temp is None else temp).detach().reshape(()).clone()
    out[DECODER_WEIGHT] = sd[WORDS]
    out[DECODER_BIAS] = sd[BIAS]
    out[POSITION_IDS] = torch.arange(sd[POSITIONS].shape[0])[None]
    return separate(out)


def separate(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor with memory of its own (a tied or shared weight stored under two names is copied: safetensors
    refuses tensors that share memory)."""
    seen, out = set(), {}
    for key, value in sd.items():
        where = (value.untyped_storage().data_ptr(), value.storage_offset()) if not value.is_meta else None
        out[key] = value.clone() if where is not None and where in seen else value
        seen.add(where)
    return out


def from_released(sd: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> tuple[dict, ShapeReport]:
    """(the model's state dict, the report) from a released-layout one; `expected`: the model's names and shapes."""
    out, unused, adapted, problems = {}, [], [], []
    for key, value in sd.items():
        if key == "temp":
            out[key] = value.reshape(1) if value.dim() == 0 else value
            adapted.append("temp: a scalar in the release, shape (1,) here")
        elif key in (DECODER_WEIGHT, DECODER_BIAS, POSITION_IDS):
            continue   # checked below against what they are derived from
        elif key.startswith(STAGE1_HEADS):
            unused.append(key)
        else:
            out[key] = value
    for derived, source in ((DECODER_WEIGHT, WORDS), (DECODER_BIAS, BIAS)):
        if derived in sd and source in sd and not _same(sd[derived], sd[source]):
            problems.append(f"{derived} differs from {source}: the masked-LM output must be tied to it")
    if POSITION_IDS in sd and POSITIONS in sd and not _same(
            sd[POSITION_IDS].reshape(-1), torch.arange(sd[POSITIONS].shape[0])):
        problems.append(f"{POSITION_IDS} is not 0..{sd[POSITIONS].shape[0] - 1}")
    report = compare(out, expected)
    report.unused, report.adapted = unused, adapted
    if problems or not report.ok:
        raise ConversionError("checkpoint does not fit the stage-2 model:\n" + "\n".join(problems + [str(report)]))
    return out, report


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (tensors without data, on the meta device, compare by shape alone)."""
    if a.is_meta or b.is_meta:
        return tuple(a.shape) == tuple(b.shape)
    return torch.equal(a, b)


def load_released_stage2(model: nn.Module, sd: dict[str, torch.Tensor]) -> ShapeReport:
    """Load a released-layout state dict into a stage-2 model, strictly (raises ConversionError with the report)."""
    converted, report = from_released(sd, {k: v.shape for k, v in model.state_dict().items()})
    model.load_state_dict(converted, strict=True)
    return report
