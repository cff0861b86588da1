"""One sample of a shard set, decoded as a `SampleSpec` asks, with every random draw from that sample's own seed.

The augmentation draws (frame offsets, crop, flip) come from a generator seeded with (seed, epoch, sample id),
and `clip_seed` gives the objective a 64-bit seed of the same three numbers (for masks, diffusion noise, ...):
a sample is delivered the same whichever rank, worker or batch loads it, so a run resumed on another number of
processes sees exactly what the uninterrupted run saw.
"""
from __future__ import annotations

import io
import json

import numpy as np
import torch

from ivtrain.config import DataConfig
from ivtrain.data.audio import audio_features
from ivtrain.data.hd import hd_views
from ivtrain.data.index import ShardIndex
from ivtrain.data.sampling import decode_clip
from ivtrain.data.spec import SampleSpec
from ivtrain.data.text import choose_caption, tokenize
from ivtrain.data.transforms import clip_transform


# why a sample was left out of its batch (metrics data/skipped/<reason>); undecodable: any error reading it;
# bad_conversation: turns that are not {from, value}, no answer, or no answer token within the text limit;
# rank_empty: its batch was left out on every rank because another rank's share of it was all skipped
SKIP_REASONS = ("undecodable", "image", "no_audio", "no_caption", "no_conversation", "bad_conversation", "rank_empty",
                "other")


class SkipSample(Exception):
    """The sample cannot serve this objective; `reason` (one of SKIP_REASONS) names the counter it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason if reason in SKIP_REASONS else "other"


def clip_seed(seed: int, epoch: int, sample_id: int) -> int:
    """A 64-bit seed that belongs to one clip in one epoch, whatever rank, batch or worker loads it (masks)."""
    return int(np.random.SeedSequence([seed, epoch, sample_id, 1]).generate_state(1, np.uint64)[0])


def decode_image(data: bytes) -> np.ndarray:
    """(1, H, W, 3) uint8: an image as a one-frame clip."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))[None]


def read_sample(index: ShardIndex, sample_id: int, epoch: int, spec: SampleSpec, data: DataConfig,
                seed: int) -> dict:
    """The sample as a dict of tensors and plain values; raises SkipSample (or a decoding error) when it cannot
    serve. Keys: key, sample_id, clip_seed, label, meta, and per the spec video + is_image, audio + has_audio,
    captions {name: {text, kind, ids}}, conversation, and what `spec.per_sample` adds."""
    meta = index.metadata(sample_id)
    rng = np.random.default_rng([seed, epoch, sample_id]) if data.train else None
    sample = {"key": index.key(sample_id), "sample_id": sample_id, "clip_seed": clip_seed(seed, epoch, sample_id),
              "label": meta.get(data.label_key), "meta": {f: meta.get(f) for f in spec.fields}}
    if spec.video is not None:
        media = index.media(sample_id)
        if media == "mp4":
            frames, _ = decode_clip(index.read(sample_id, "mp4"), spec.video.frames, rng)
        elif spec.images:
            frames = decode_image(index.read(sample_id, media))
        else:
            raise SkipSample("image")
        if spec.video.hd_tiles:
            sample["video"], sample["tile_grid"] = hd_views(frames, spec.video.size, spec.video.hd_tiles)
        else:
            flip = data.flip and meta.get("source") not in data.no_flip_sources
            sample["video"] = clip_transform(frames, spec.video.size, data.train, data.scales, data.max_distort, flip,
                                             rng)
        sample["is_image"] = media != "mp4"
    if spec.audio is not None:
        # a shard set may give every sample a FLAC member (so that readers inferring one schema see the same
        # members everywhere) and say in the json which clips have no sound: those count as without audio
        raw = index.read(sample_id, "flac") if meta.get("has_audio", True) is not False else None
        if raw is None and spec.audio.required:
            raise SkipSample("no_audio")
        sample["has_audio"] = raw is not None
        sample["audio"] = audio_features(raw, spec.audio) if raw is not None else None
    captions = {}
    for name, cs in spec.captions:
        chosen = choose_caption(meta, cs.kinds)
        if chosen is None:
            if cs.required:
                raise SkipSample("no_caption")
            chosen = ("", "")
        kind, text = chosen
        captions[name] = {"kind": kind, "text": text,
                          "ids": tokenize(text, cs.tokenizer, cs.max_length) if cs.tokenizer else None}
    if captions:
        sample["captions"] = captions
    if spec.conversation is not None:
        raw = index.read(sample_id, "conversations.json")
        if raw is None and spec.conversation.required:
            raise SkipSample("no_conversation")
        sample["conversation"] = json.loads(raw) if raw is not None else None
    if spec.per_sample is not None:
        sample.update(spec.per_sample(sample, sample["clip_seed"]))
    return sample


def empty_audio(spec_features: str, bins: int) -> torch.Tensor:
    """Zero frames of audio features: what a sample without audio contributes before padding."""
    return torch.zeros(0) if spec_features == "waveform" else torch.zeros(0, bins)
