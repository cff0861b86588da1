"""Shard sets for the trainer's mixture: captioned video with FLAC audio and captioned video without (both built by
the data engine: ingest -> probe -> split -> cut -> captions -> shard), and one set mixing images with clips.
Used by tests/test_train_core.py and bench/mixture_loader.py."""
from __future__ import annotations

import io
import json
import tarfile
from datetime import datetime
from pathlib import Path

import numpy as np

WORDS = "a red square moves left right up down over dark ground with tone and two shapes slowly quickly".split()


def caption(rng: np.random.Generator) -> str:
    """Captions of 2 to 9 words: batches whose texts differ in length."""
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 10))))


def add_captions(corpus, kind: str, seed: int, lacking: int = 0) -> None:
    """A random caption of `kind` for every clip but each `lacking`-th (in clip id order; 0: every clip)."""
    from ivdata.manifest import Manifest

    rng = np.random.default_rng(seed)
    with Manifest(corpus.manifest_path) as m:
        clips = [r["clip_id"] for r in m.rows("SELECT clip_id FROM clips WHERE status = 'ok' ORDER BY clip_id")]
        m.insert_rows("captions", [{"clip_id": c, "kind": kind, "text": caption(rng), "lang": "en", "model": "test",
                                    "prompt_hash": "-", "created_at": datetime(2026, 1, 1)} for i, c in enumerate(clips)
                                   if not lacking or i % lacking != lacking - 1])


def build_captioned(name: str, videos: list[Path], home: Path, kind: str, seed: int,
                    also: dict[str, int] | None = None) -> Path:
    """ingest -> probe -> split -> cut -> captions -> shard, by the data engine: a caption of `kind` for every clip,
    and of each kind in `also` for every clip but each n-th (n its value: those lack that kind)."""
    from ivdata.pipeline import build_corpus, shard
    from ivdata.stages.shard import ShardConfig

    # short side 64: decord (the loader's decoder) refuses frames narrower than 64 px; PyAV would take over
    corpus = build_corpus(name, videos, home=home, cut="reencode", short_side=64, shard_maxcount=4)
    add_captions(corpus, kind, seed)
    for i, (other, lacking) in enumerate((also or {}).items()):
        add_captions(corpus, other, seed + 100 + i, lacking)
    shard(corpus, ShardConfig(subset="all", shardset="captioned", maxcount=4))
    return corpus.wids_index("captioned")


def write_mixed_shards(out: Path, videos: list[Path], seed: int, count: int = 8, clip_every: int = 4) -> Path:
    """Images (jpg) and clips (mp4, every `clip_every`-th sample; 0: none, an image-text set) in one shard set:
    batches whose samples differ in frame count."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / "mixed-000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(count):
            key = f"mixed{i:03d}"
            if clip_every and i % clip_every == clip_every - 1:
                media, ext = Path(videos[i % len(videos)]).read_bytes(), "mp4"
            else:
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, format="JPEG")
                media, ext = buf.getvalue(), "jpg"
            meta = {"clip_id": key, "source": "mixed", "source_id": key, "captions": {"web": caption(rng)}}
            for member, payload in ((ext, media), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    index = out / "mixed.wids.json"
    index.write_text(json.dumps({"wids_version": 1, "shardlist": [{"url": tar_path.name, "nsamples": count,
                                                                   "filesize": tar_path.stat().st_size}]}))
    return index


def write_tokenizer(path, words: list[str]):
    """A word-level tokenizer over `words` (+ [PAD], [UNK], [CLS], [SEP]) saved as a transformers directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                 ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(path)
    return path
