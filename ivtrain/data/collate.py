"""Samples -> a batch. Where lengths differ (frames per clip, caption tokens, audio frames) the batch holds the
tensors padded to the longest with a boolean mask of the real positions; everything else is stacked or listed.

Batch keys (each only when the spec asks for it):
  size, keys, sample_ids, clip_seeds, labels, meta {field: [..]}
  video (B, 3, T, S, S) uint8, frames (B,) real frames per clip, frame_mask (B, T), is_image (B,)
  audio (B, F, M) or (B, samples), audio_mask (B, F), has_audio (B,)
  captions {name: {ids (B, L), mask (B, L), text [..], kind [..]}}
  conversation [..]
  what `spec.per_sample` adds: stacked when every sample's tensor has one shape, else a list
"""
from __future__ import annotations

import torch

from ivtrain.data.spec import SampleSpec
from ivtrain.data.text import pad_id

SAMPLE_KEYS = ("key", "sample_id", "clip_seed", "label", "meta", "video", "is_image", "audio", "has_audio",
               "captions", "conversation")


def pad_stack(tensors: list[torch.Tensor], dim: int = 0, value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors that differ only in size along `dim`, padding with `value`; returns (stacked, mask) where
    mask (B, longest) marks the real positions."""
    lengths = torch.tensor([t.shape[dim] for t in tensors], dtype=torch.long)
    longest = int(lengths.max()) if len(tensors) else 0
    out = []
    for t in tensors:
        missing = longest - t.shape[dim]
        if missing:
            shape = list(t.shape)
            shape[dim] = missing
            t = torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=dim)
        out.append(t)
    mask = torch.arange(longest)[None, :] < lengths[:, None]
    return torch.stack(out), mask


def collate(samples: list[dict], spec: SampleSpec) -> dict:
    batch: dict = {"size": len(samples), "keys": [s["key"] for s in samples],
                   "sample_ids": [s["sample_id"] for s in samples], "clip_seeds": [s["clip_seed"] for s in samples],
                   "labels": [s["label"] for s in samples],
                   "meta": {f: [s["meta"].get(f) for s in samples] for f in spec.fields}}
    if not samples:
        return batch
    if spec.video is not None:
        batch["video"], batch["frame_mask"] = pad_stack([s["video"] for s in samples], dim=1)
        batch["frames"] = batch["frame_mask"].sum(1)
        batch["is_image"] = torch.tensor([s["is_image"] for s in samples])
    if spec.audio is not None:
        bins = spec.audio.num_mel_bins
        feats = [s["audio"] if s["audio"] is not None else
                 (torch.zeros(0) if spec.audio.features == "waveform" else torch.zeros(0, bins)) for s in samples]
        batch["audio"], batch["audio_mask"] = pad_stack(feats, dim=0)
        batch["has_audio"] = torch.tensor([s["has_audio"] for s in samples])
    if spec.captions:
        batch["captions"] = {}
        for name, cs in spec.captions:
            entry = {"text": [s["captions"][name]["text"] for s in samples],
                     "kind": [s["captions"][name]["kind"] for s in samples]}
            if cs.tokenizer:
                entry["ids"], entry["mask"] = pad_stack([s["captions"][name]["ids"] for s in samples], 0,
                                                        pad_id(cs.tokenizer))
            batch["captions"][name] = entry
    if spec.conversation is not None:
        batch["conversation"] = [s["conversation"] for s in samples]
    for key in samples[0]:
        if key in SAMPLE_KEYS:
            continue
        values = [s[key] for s in samples]
        same_shape = all(torch.is_tensor(v) for v in values) and len({tuple(v.shape) for v in values}) == 1
        batch[key] = torch.stack(values) if same_shape else values
    return batch
