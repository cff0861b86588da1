"""Stage-3 samples and batches: conversations tokenized in the loader's workers, views and texts padded into a
batch, and a batch turned into the model's inputs on the device. `iv chat` builds its one-sample batches with the
same functions, so a question is tokenized and its clip framed as in training.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ivtrain.data.collate import collate as default_collate
from ivtrain.data.collate import pad_stack
from ivtrain.data.conversation import IGNORE, ConversationError, MediaMarkers, encode_conversation, instruction_text
from ivtrain.data.samples import SkipSample
from ivtrain.data.spec import SampleSpec
from ivtrain.data.text import load_tokenizer
from ivtrain.data.transforms import normalize
from ivtrain.models.llm import load_llm_tokenizer

BASE_KEYS = ("key", "sample_id", "clip_seed", "label", "meta")


@dataclass(frozen=True)
class TextSettings:
    """What the workers need to tokenize a sample (picklable: paths and numbers only)."""
    llm: str                          # LLM directory (its tokenizer)
    chat_template: str                # "" or a Jinja file replacing the LLM's template
    qformer: str                      # QFormer (BERT) directory (its tokenizer); "" when no text enters it
    max_text_len: int                 # LLM text tokens (vision tokens not counted)
    qformer_text_len: int
    markers: MediaMarkers
    caption_prompt: str = ""          # a sample without a conversation but with a caption: this question, the
                                      # caption its answer
    fold_system: bool = False         # the template has no system role (check_template)

    def llm_tokenizer(self):
        return load_llm_tokenizer(self.llm, self.chat_template)

    def qformer_tokenizer(self):
        tokenizer = load_tokenizer(self.qformer)
        tokenizer.truncation_side = "left"   # a long instruction keeps its end, as released
        return tokenizer

    def turns_of(self, sample: dict) -> list[dict]:
        turns = sample.get("conversation")
        if turns is None:
            caption = (sample.get("captions") or {}).get("caption", {}).get("text")
            if not caption:
                raise SkipSample("no_conversation")
            media = "<image>" if sample.get("is_image") else "<video>"
            turns = [{"from": "human", "value": f"{media}\n{self.caption_prompt}"}, {"from": "gpt", "value": caption}]
        return turns

    def encode(self, turns: list[dict], media: str) -> dict:
        """Token ids and labels of a conversation, its QFormer instruction, and what truncation dropped."""
        try:
            enc = encode_conversation(self.llm_tokenizer(), turns, media, self.max_text_len, self.markers,
                                      self.fold_system)
        except ConversationError:
            raise SkipSample("bad_conversation") from None
        out = {**enc.tensors(), "vision_at": enc.vision_at, "truncated": enc.truncated,
               "answer_tokens_dropped": enc.answer_tokens_dropped}
        if self.qformer:
            out["qformer_ids"] = self.qformer_ids(instruction_text(turns))
        return out

    def qformer_ids(self, instruction: str) -> torch.Tensor:
        ids = self.qformer_tokenizer()(instruction, truncation=True, max_length=self.qformer_text_len)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def __call__(self, sample: dict, seed: int) -> dict:   # the sample spec's per-sample hook (in the workers)
        return self.encode(self.turns_of(sample), "image" if sample.get("is_image") else "video")


def sample_views(video: torch.Tensor) -> torch.Tensor:
    """A sample's video as views (V, 3, T, S, S): one clip, or HD mode's tiles and global view."""
    return video[None] if video.dim() == 4 else video


def collate(samples: list[dict], spec: SampleSpec, text: TextSettings) -> dict:
    """Samples -> a batch: every sample's views in one (V, 3, T, S, S) tensor (padded in time; `view_frames` the
    real frames, `views_per_sample` how many each sample has), LLM ids and token labels padded on the right
    (`input_ids`, `token_labels`; `text_len`, `vision_at` per sample), QFormer instruction ids with their mask, and the truncation counts."""
    plain = replace(spec, video=None, conversation=None, captions=(), per_sample=None)
    batch = default_collate([{k: s[k] for k in BASE_KEYS} for s in samples], plain)
    if not samples:
        return batch
    views = [sample_views(s["video"]) for s in samples]
    batch["views"], frame_mask = pad_stack([v for vs in views for v in vs], dim=1)
    batch["view_frames"] = frame_mask.sum(1)
    batch["views_per_sample"] = [v.shape[0] for v in views]
    batch["is_image"] = torch.tensor([s["is_image"] for s in samples])
    tokenizer = text.llm_tokenizer()
    batch["input_ids"], mask = pad_stack([s["input_ids"] for s in samples], 0, tokenizer.pad_token_id)
    batch["token_labels"] = pad_stack([s["labels"] for s in samples], 0, IGNORE)[0]
    batch["text_len"] = mask.sum(1).tolist()
    batch["vision_at"] = [s["vision_at"] for s in samples]
    if text.qformer:
        batch["qformer_ids"], batch["qformer_mask"] = pad_stack([s["qformer_ids"] for s in samples], 0,
                                                                text.qformer_tokenizer().pad_token_id)
    batch["truncated"] = torch.tensor([float(s["truncated"]) for s in samples])
    batch["answer_tokens_dropped"] = torch.tensor([float(s["answer_tokens_dropped"]) for s in samples])
    return batch


def model_inputs(batch: dict, device: torch.device, mean: list[float], std: list[float]) -> dict:
    """A batch on the device as the model's keyword inputs (views normalized)."""
    out = {"views": normalize(batch["views"].to(device, non_blocking=True), mean, std),
           "view_frames": batch["view_frames"].to(device), "views_per_sample": batch["views_per_sample"],
           "input_ids": batch["input_ids"].to(device), "vision_at": batch["vision_at"], "text_len": batch["text_len"],
           "qformer_ids": None, "qformer_mask": None}
    if "token_labels" in batch:
        out["labels"] = batch["token_labels"].to(device)
    if "qformer_ids" in batch:
        out["qformer_ids"], out["qformer_mask"] = batch["qformer_ids"].to(device), batch["qformer_mask"].to(device)
    return out


def sequence_lengths(batch: dict, queries: int) -> list[int]:
    """LLM tokens of each sample: its text and its views' query tokens."""
    return [t + v * queries for t, v in zip(batch["text_len"], batch["views_per_sample"])]
