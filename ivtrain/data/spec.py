"""What an objective needs from each sample. The loader builds itself from this; the engine never names a modality.

An objective returns one `SampleSpec` (`Objective.sample_spec`). Each part it sets is read from the shards and
delivered in the batch; each part it leaves unset is not even decoded:

- video:        frames sampled from `K.mp4` (and from image members when `images` is set, as one-frame clips)
- audio:        features of `K.flac` (Kaldi fbank, Whisper-style log-mel, or the waveform)
- captions:     for each output name, the first caption kind present in `K.json`'s `captions`, tokenized in the
                loader's workers with a tokenizer from a local directory
- conversation: the turns of `K.conversations.json`
- fields:       plain `K.json` fields passed through (source, source_id, label, ...)
- per_sample:   a picklable callable run in the workers on each decoded sample with that sample's own seed
                (e.g. masks drawn there, so a mask is the same whichever rank or worker loads the sample)
- by_source:    another spec for the batches of a named source of the mixture (what an image-text set must
                deliver differs from what a set feeding audio losses must: `for_source` picks it)

A sample that lacks a `required` part is skipped and counted under a reason (`no_audio`, `no_caption`, ...);
a source whose shards cannot satisfy the spec at all fails before the first step (`check_source`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class VideoSpec:
    frames: int                      # frames sampled per clip (sparse uniform: one per equal segment)
    size: int                        # square side after crop and resize
    hd_tiles: int = 0                # > 0: no crop; up to this many size x size tiles by the clip's aspect ratio
                                     # plus a global view, as (V, 3, T, size, size) (ivtrain.data.hd)


@dataclass(frozen=True)
class AudioSpec:
    seconds: float = 10.0            # the clip's first `seconds` of audio (shorter audio is padded, with a mask)
    sample_rate: int = 16000
    features: Literal["fbank", "log_mel", "waveform"] = "fbank"
    num_mel_bins: int = 128
    required: bool = True            # False: a sample without audio gets zeros and has_audio False


@dataclass(frozen=True)
class CaptionSpec:
    kinds: tuple[str, ...]           # caption kinds in order of preference, e.g. ("AVS", "AV", "V")
    tokenizer: str = ""              # a local transformers tokenizer directory; "" delivers the text only
    max_length: int = 32             # tokens, special tokens included (longer captions are truncated)
    required: bool = True


@dataclass(frozen=True)
class ConversationSpec:
    required: bool = True


@dataclass(frozen=True)
class SampleSpec:
    video: VideoSpec | None = None
    images: bool = False             # image samples are delivered too (as one-frame clips of video.size)
    audio: AudioSpec | None = None
    captions: tuple[tuple[str, CaptionSpec], ...] = ()   # (output name, spec) pairs
    conversation: ConversationSpec | None = None
    fields: tuple[str, ...] = ("source", "source_id")
    per_sample: Callable[[dict, int], dict[str, Any]] | None = None
    media_required: bool = field(default=True, repr=False)   # every sample has a video or image member
    by_source: tuple[tuple[str, "SampleSpec"], ...] = ()     # (mixture source name, its spec) pairs

    def caption_specs(self) -> dict[str, CaptionSpec]:
        return dict(self.captions)

    def for_source(self, name: str) -> "SampleSpec":
        """The spec the batches of source `name` are read and collated by (this one unless `by_source` names it)."""
        return dict(self.by_source).get(name, self)


class SpecError(ValueError):
    """A shard set cannot deliver what the objective asks for."""


def check_source(name: str, where: str, index, spec: SampleSpec) -> None:
    """Fail before any step when a source's shards lack a member type the spec requires in every sample; when only
    some samples lack it, those are skipped and counted while training."""
    from ivtrain.data.index import IMAGES

    n = len(index)
    videos = index.count("mp4")
    images = sum(index.count(e) for e in IMAGES)
    if spec.video is not None and not spec.images and videos == 0:
        raise SpecError(f"source {name} ({where}): the objective reads video (K.mp4) and none of its {n} samples "
                        f"has one ({images} are images: this objective does not take image samples)")
    if spec.audio is not None and spec.audio.required and index.count("flac") == 0:
        raise SpecError(f"source {name} ({where}): the objective needs audio (K.flac members) and none of its "
                        f"{n} samples has one")
    if spec.conversation is not None and spec.conversation.required and index.count("conversations.json") == 0:
        raise SpecError(f"source {name} ({where}): the objective needs conversations (K.conversations.json) and "
                        f"none of its {n} samples has one")
    if spec.captions and index.count("json") == 0:
        raise SpecError(f"source {name} ({where}): the objective needs captions and its samples carry no K.json")
    for output, cs in spec.captions:
        if cs.required and not _any_caption(index, cs.kinds):
            raise SpecError(f"source {name} ({where}): the objective needs a caption of kind "
                            f"{' or '.join(cs.kinds)} ({output}) and none of {min(n, CAPTION_PROBES)} samples "
                            f"read across its shards has one")


CAPTION_PROBES = 64   # samples read, evenly spread over a source, to find out whether it has a caption kind at all


def _any_caption(index, kinds: tuple[str, ...]) -> bool:
    """Whether any of CAPTION_PROBES samples spread over the source carries one of `kinds`. A source where only
    some samples lack it trains (those are skipped and counted); one where none has it would skip every sample of
    every batch, so it stops before the first step."""
    from ivtrain.data.text import choose_caption

    n = len(index)
    probes = sorted({i * n // min(n, CAPTION_PROBES) for i in range(min(n, CAPTION_PROBES))})
    return any(choose_caption(index.metadata(i), kinds) is not None for i in probes)
