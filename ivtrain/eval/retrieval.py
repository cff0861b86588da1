"""Zero-shot retrieval with a stage-2 run: text -> video and video -> text R@1/5/10 and median rank.

Each sample of the shards is one clip (or image) with one caption (the first of `caption kinds` it has; a sample
without one is skipped and counted). The clip is encoded whole (all its tokens, centre crop, evaluation-mode frame
sampling); the caption through the text-only layers. The dual-encoder score of a (clip, caption) pair is the
cosine of their projections; with `audio`, the clip's feature is av_fusion of its audio and vision projections
(the audio-visual losses' feature) and the fusion layers see its audio and vision tokens.
A caption's correct clips are the clips whose caption is the same text (one, when captions are unique, as in
MSR-VTT; a synthetic set may repeat a caption, and a text cannot tell such clips apart); a clip's correct captions
likewise. The rank of a query is that of its best-ranked correct item (1 = first); R@k is the share of queries
ranked k or better, in percent.
Re-ranking (as released, `k_test`): each query's top k by the dual-encoder score are scored again by the fusion
encoder's matching head (itm_head, or avtm_head with audio), whose positive logit orders them; the rest keep
their order below them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ivkit.progress import progress
from ivtrain.config import DataConfig, build_recipe
from ivtrain.data.index import ShardIndex
from ivtrain.data.loader import MixtureStream, Source, make_loader
from ivtrain.data.spec import AudioSpec, CaptionSpec, SampleSpec, VideoSpec, check_source
from ivtrain.data.text import load_tokenizer
from ivtrain.data.transforms import normalize
from ivtrain.devices import pick_device
from ivtrain.engine.distributed import DistContext
from ivtrain.export import ExportError, load_artifact


@dataclass
class Encoded:
    media: torch.Tensor        # (N, D) unit-norm clip features
    text: torch.Tensor         # (N, D) unit-norm caption features
    tokens: torch.Tensor       # (N, Nv, C) what the fusion layers attend to
    token_mask: torch.Tensor   # (N, Nv)
    hidden: torch.Tensor       # (N, L, C) captions after the text-only layers
    text_mask: torch.Tensor    # (N, L)
    captions: list[str]
    skipped: dict


def load_run(run_dir: str | Path, device: torch.device, init: bool = False):
    """(the stage-2 model of a finished run, in eval mode, its recipe). init: instead the model as the run's recipe
    initializes it (stage-1 vision tower, the BERT directory's weights, fresh heads under the run's seed)."""
    from ivtrain.objectives.iv2_stage2_build import build_model
    from ivtrain.stage2_layout import load_released_stage2

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.json").is_file():
        raise ExportError(f"{run_dir} holds no recipe.json: not a training run directory")
    recipe = build_recipe(json.loads((run_dir / "recipe.json").read_text()))
    if recipe.objective != "iv2_stage2":
        raise ExportError(f"{run_dir} is an {recipe.objective} run: retrieval needs a stage-2 (iv2_stage2) run")
    torch.manual_seed(recipe.train.seed)
    model, _ = build_model(recipe, torch.device("cpu"), DistContext(), load_init=init)
    if not init:
        load_released_stage2(model, load_artifact(run_dir, "stage2"))
    model.vision_encoder.set_backend("sdpa")
    return model.to(device).eval(), recipe


def eval_stream(recipe, shards: str, kinds: tuple[str, ...], audio: bool, batch_size: int, workers: int):
    cfg, data = recipe.section, recipe.data
    eval_data = DataConfig(shards=shards, num_frames=data.num_frames, image_size=data.image_size, mean=data.mean,
                           std=data.std, train=False, shuffle=False, batch_size=batch_size, num_workers=workers,
                           index_cache=data.index_cache)
    spec = SampleSpec(video=VideoSpec(frames=data.num_frames, size=data.image_size), images=True,
                      audio=AudioSpec(seconds=cfg.audio.seconds, num_mel_bins=cfg.audio.num_mel_bins) if audio else None,
                      captions=(("caption", CaptionSpec(kinds, cfg.text.tokenizer or cfg.text.path,
                                                        cfg.text.max_length)),))
    index = ShardIndex.open(shards, eval_data.index_cache)
    check_source("eval", shards, index, spec)
    return MixtureStream([Source("eval", index)], eval_data, spec, epochs=1, keep_last=True), len(index)


@torch.no_grad()
def encode(model, recipe, stream, total: int, audio: bool, device: torch.device) -> Encoded:
    from ivtrain.objectives.iv2_stage2_build import padded_text, stage2_audio

    cfg, data = recipe.section, recipe.data
    tokenizer = load_tokenizer(cfg.text.tokenizer or cfg.text.path)
    parts: dict[str, list] = {k: [] for k in ("media", "text", "tokens", "token_mask", "hidden", "text_mask")}
    captions, skipped = [], {}
    longest = 0
    with progress("encode clips and captions", total) as advance, \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in make_loader(stream, stream.data.num_workers, pin_memory=device.type == "cuda"):
            advance(batch["size"] + sum(batch["skipped"].values()))
            for reason, n in batch["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
            if not batch["size"]:
                continue
            n = batch["size"]
            video = normalize(batch["video"].to(device), data.mean, data.std)
            tokens, mask, pooled = model.encode_vision(video, batch["frames"].to(device), None)
            media = model.vision_proj(pooled)
            if audio:
                fbank = stage2_audio(batch, n, cfg.audio, device)
                media, tokens, mask = model.audio_visual(model.encode_audio_tokens(fbank), media, tokens, mask)
            ids, t_mask = padded_text(batch["captions"]["caption"], n, cfg.text.max_length, tokenizer, device)
            hidden, t_proj = model.encode_text(ids, t_mask)
            for key, value in (("media", F.normalize(media.float(), dim=-1)), ("text", F.normalize(t_proj.float(), dim=-1)),
                               ("tokens", tokens), ("token_mask", mask), ("hidden", hidden), ("text_mask", t_mask)):
                parts[key].append(value.cpu())
            longest = max(longest, tokens.shape[1])
            captions += batch["captions"]["caption"]["text"]
    if not captions:
        raise ValueError(f"no sample of the shards could be read with a caption ({skipped})")
    pad = lambda ts: torch.cat([F.pad(t, (0, 0, 0, longest - t.shape[1])) if t.dim() == 3  # noqa: E731
                                else F.pad(t, (0, longest - t.shape[1])) for t in ts])
    return Encoded(torch.cat(parts["media"]), torch.cat(parts["text"]), pad(parts["tokens"]), pad(parts["token_mask"]),
                   torch.cat(parts["hidden"]), torch.cat(parts["text_mask"]), captions, skipped)


def correct_pairs(captions: list[str]) -> torch.Tensor:
    """(N clips, N captions) bool: the caption is the clip's own or the same text."""
    norm = [" ".join(c.lower().split()) for c in captions]
    lookup: dict[str, int] = {}
    ids = torch.tensor([lookup.setdefault(c, len(lookup)) for c in norm])
    return ids[:, None] == ids[None, :]


def ranks(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """(Q,) 1-based rank of each query's best-ranked correct item; scores and correct (Q, items)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    hits = correct.gather(1, order)
    return hits.float().argmax(1) + 1


def summary(r: torch.Tensor) -> dict:
    """R@1/5/10 in percent and the median rank (the mean of the two middle ranks for an even count)."""
    r = r.double()
    return {"r1": 100 * float((r <= 1).double().mean()), "r5": 100 * float((r <= 5).double().mean()),
            "r10": 100 * float((r <= 10).double().mean()), "median_rank": float(r.quantile(0.5))}


@torch.no_grad()
def rerank(model, enc: Encoded, scores: torch.Tensor, k: int, head, device: torch.device, advance,
           texts_are_queries: bool) -> torch.Tensor:
    """Scores (Q, items) with each query's top k ordered by the matching head's positive logit, above the rest."""
    out = scores.clone()
    lift = float(scores.max()) + 1.0
    for q in range(scores.shape[0]):
        top = scores[q].topk(min(k, scores.shape[1])).indices
        logits = []
        for chunk in top.split(32):
            if texts_are_queries:   # one caption against k clips
                hidden, t_mask = enc.hidden[q].expand(len(chunk), -1, -1), enc.text_mask[q].expand(len(chunk), -1)
                tokens, m_mask = enc.tokens[chunk], enc.token_mask[chunk]
            else:                   # one clip against k captions
                hidden, t_mask = enc.hidden[chunk], enc.text_mask[chunk]
                tokens, m_mask = enc.tokens[q].expand(len(chunk), -1, -1), enc.token_mask[q].expand(len(chunk), -1)
            logits.append(model.match_score(hidden.to(device), t_mask.to(device), tokens.to(device),
                                            m_mask.to(device), head)[:, 1].float().cpu())
        matched = torch.cat(logits)
        out[q, top] = matched - float(matched.min()) + lift   # above every score outside the top k
        advance()
    return out


def run_retrieval(run_dir: str | Path, shards: str, k_test: int = 128, do_rerank: bool = True, audio: bool = False,
                  caption_kinds: tuple[str, ...] = (), batch_size: int = 8, workers: int = 2, device: str = "auto",
                  init: bool = False) -> dict:
    dev = pick_device(device, "--device")
    model, recipe = load_run(run_dir, dev, init)
    cfg = recipe.section
    if audio and not hasattr(model, "audio_encoder"):
        raise ValueError(f"{run_dir} was trained without an audio tower: no audio-visual retrieval")
    kinds = tuple(caption_kinds) or tuple(cfg.captions.get("avtc" if audio else "vtc") or cfg.captions["default"])
    stream, total = eval_stream(recipe, shards, kinds, audio, batch_size, workers)
    enc = encode(model, recipe, stream, total, audio, dev)
    correct = correct_pairs(enc.captions)
    v2t = enc.media @ enc.text.T
    result = {"run": str(run_dir), "shards": str(shards), "init": init, "media": "audio+video" if audio else "video",
              "caption_kinds": list(kinds), "num_clips": len(enc.captions),
              "distinct_captions": int(correct.float().argmax(1).unique().numel()), "skipped": enc.skipped,
              "chance_r1": 100 * float(correct.float().mean(1).mean()),
              "t2v": summary(ranks(v2t.T, correct.T)), "v2t": summary(ranks(v2t, correct))}
    if do_rerank:
        head = model.avtm_head if audio else model.itm_head
        n = len(enc.captions)
        with progress("re-rank with the matching head", 2 * n) as advance:
            t2v_x = rerank(model, enc, v2t.T, k_test, head, dev, advance, texts_are_queries=True)
            v2t_x = rerank(model, enc, v2t, k_test, head, dev, advance, texts_are_queries=False)
        result.update(k_test=k_test, t2v_rerank=summary(ranks(t2v_x, correct.T)),
                      v2t_rerank=summary(ranks(v2t_x, correct)))
    return result

