"""`iv chat`: questions about a video or an image answered by a stage-3 run; `iv export model`: the run as a
directory that stands alone (vision tower, bridge, and an LLM transformers loads with the adapters merged).

A run is a finished iv2_stage3 run directory (export.json + encoder/bridge/lora safetensors + recipe.json), or what
`iv export model` wrote (the same, with `llm/` and `qformer/` beside, named by export.json's `chat`). The clip is
sampled and framed as the loader does for evaluation (T frames at the segment middles, centre crop, or HD views),
the question rendered by the LLM's chat template and tokenized as in training (ivtrain.objectives.iv2_stage3_batch).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ivtrain.config import build_recipe
from ivtrain.data.conversation import ConversationError, end_of_turn, instruction_text, prompt_ids, to_messages
from ivtrain.data.hd import hd_views
from ivtrain.data.sampling import decode_clip
from ivtrain.data.samples import decode_image
from ivtrain.data.transforms import clip_transform, normalize
from ivtrain.export import ExportError, read_export, write_export
from ivtrain.models.llm import LLMError
from ivtrain.models.qformer import QFormerError
from ivtrain.objectives.iv2_stage3 import IV2Stage3, TextSettings, build_videochat, split_export
from ivtrain.objectives.iv2_stage3_batch import sample_views


class ChatError(ValueError):
    """A run, a media file or a question `iv chat` cannot use (one line for the CLI)."""


@dataclass
class Generation:
    max_new_tokens: int = 128
    sample: bool = False             # False: greedy
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


@dataclass
class ChatModel:
    model: torch.nn.Module
    text: TextSettings
    frames: int
    size: int
    hd_tiles: int
    mean: list[float]
    std: list[float]
    device: torch.device
    system: str = ""
    turns: list[dict] = field(default_factory=list)   # the conversation so far (interactive mode)


def run_recipe(run_dir: Path):
    path = run_dir / "recipe.json"
    if not path.is_file():
        raise ChatError(f"{run_dir} holds no recipe.json: not a training run or an `iv export model` directory")
    return build_recipe(json.loads(path.read_text()))


def load_chat_model(run_dir: str | Path, device: str = "auto") -> ChatModel:
    run_dir = Path(run_dir)
    try:
        meta = read_export(run_dir)
        if meta["objective"] != IV2Stage3.name:
            raise ChatError(f"{run_dir} is a {meta['objective']} run: chat needs a stage-3 ({IV2Stage3.name}) run")
        recipe = run_recipe(run_dir)
        cfg = replace(recipe.section, init=str(run_dir))
        parts = meta.get("chat", {})   # an exported model: its own LLM (adapters merged) and QFormer files
        llm_path = str(run_dir / parts["llm"]) if "llm" in parts else None
        if "qformer" in parts:
            cfg = replace(cfg, qformer=replace(cfg.qformer, bert=str(run_dir / parts["qformer"]), load_weights=False))
        if llm_path:
            cfg = replace(cfg, llm=replace(cfg.llm, path=llm_path, chat_template=""))
        model = build_videochat(cfg, recipe.data.num_frames, recipe.data.image_size, llm_path=llm_path)
    except (ExportError, LLMError, QFormerError, OSError, ValueError) as e:
        raise ChatError(str(e)) from None
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    text = IV2Stage3.text_settings(cfg)
    return ChatModel(model.to(dev).eval(), text, recipe.data.num_frames, recipe.data.image_size, cfg.hd_tiles,
                     recipe.data.mean, recipe.data.std, dev)


def media_views(chat: ChatModel, path: Path, is_image: bool) -> torch.Tensor:
    """The media file as the model's views (V, 3, T, S, S) uint8, framed as the loader frames evaluation clips."""
    kind = "image" if is_image else "video"
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ChatError(f"cannot read {kind} {path}: {e.strerror or e}") from None
    return views_of(chat, data, is_image, f"{kind} {path}")


def views_of(chat: ChatModel, data: bytes, is_image: bool, name: str = "media") -> torch.Tensor:
    """Views of a media file's bytes (a shard member, a file's contents)."""
    try:
        frames = decode_image(data) if is_image else decode_clip(data, chat.frames, None)[0]
    except Exception as e:   # not a video/image, or one no decoder reads: one reason, no traceback
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ChatError(f"cannot read {name}: {reason}") from None
    if chat.hd_tiles:
        return hd_views(frames, chat.size, chat.hd_tiles)[0]
    return sample_views(clip_transform(frames, chat.size, False, [1.0], 1, False, None))


def answer(chat: ChatModel, views: torch.Tensor, is_image: bool, question: str, gen: Generation,
           zero_vision: bool = False) -> str:
    """The model's answer to `question` about the media, after the conversation so far (chat.turns, updated).
    zero_vision: the vision tokens replaced by zeros (what the answer owes to the media)."""
    media = "image" if is_image else "video"
    turns = list(chat.turns) or ([{"from": "system", "value": chat.system}] if chat.system else [])
    first = not any(t["from"] == "human" for t in turns)
    turns.append({"from": "human", "value": (f"<{media}>\n" if first else "") + question})
    try:
        enc = prompt_ids(chat.text.llm_tokenizer(), to_messages(turns, media, chat.text.markers, answered=False,
                                                                 fold_system=chat.text.fold_system))
    except ConversationError as e:
        raise ChatError(str(e)) from None
    dev = chat.device
    qformer = chat.text.qformer_ids(instruction_text(turns))[None].to(dev) if chat.text.qformer else None
    tokenizer = chat.text.llm_tokenizer()
    torch.manual_seed(gen.seed)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        out = chat.model.generate(
            normalize(views.to(dev), chat.mean, chat.std), torch.tensor([views.shape[2]] * views.shape[0], device=dev),
            [views.shape[0]], qformer, None if qformer is None else torch.ones_like(qformer, dtype=torch.bool),
            torch.tensor([enc.ids], device=dev), [enc.vision_at], [len(enc.ids)], zero_vision=zero_vision,
            max_new_tokens=gen.max_new_tokens, do_sample=gen.sample, temperature=gen.temperature if gen.sample else None,
            top_p=gen.top_p if gen.sample else None, pad_token_id=tokenizer.pad_token_id, **stops(chat))[0]
    text = tokenizer.decode(out, skip_special_tokens=False)
    end = end_of_turn(tokenizer, chat.text.fold_system)
    text = text.split(end)[0] if end else text
    for special in tokenizer.all_special_tokens:
        text = text.replace(special, "")
    text = text.strip()
    chat.turns = turns + [{"from": "gpt", "value": text}]
    return text


def stops(chat: ChatModel) -> dict:
    """Where generation stops: the tokenizer's and the model's end-of-sequence ids, and the text the chat template
    ends an answer with (a base model's template may end turns with another token than its eos)."""
    tokenizer = chat.text.llm_tokenizer()
    configured = chat.model.lm.generation_config.eos_token_id
    ids = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}
    out = {"eos_token_id": sorted(ids)}
    end = end_of_turn(tokenizer, chat.text.fold_system)
    if end and tokenizer.convert_tokens_to_ids(end) not in ids:
        out.update(stop_strings=[end], tokenizer=tokenizer)
    return out


def export_model(run_dir: str | Path, out: str | Path, merge_lora: bool = True) -> str:
    """The run as a directory that stands alone: encoder + bridge safetensors, export.json, recipe.json, the
    QFormer's config and tokenizer (`qformer/`), and with merge_lora the LLM with its adapters folded in (`llm/`,
    loadable by plain transformers); without, the adapters as a peft adapter directory (`lora/`) over the run's
    LLM, which stays where the recipe names it. Returns a summary line."""
    from ivtrain.models.llm import merged_llm

    run_dir, out = Path(run_dir), Path(out)
    try:
        if "chat" in read_export(run_dir):
            raise ChatError(f"{run_dir} is already an exported model")
    except ExportError as e:
        raise ChatError(str(e)) from None
    if out.exists() and any(out.iterdir()):
        raise ChatError(f"{out} exists and is not empty")
    chat = load_chat_model(run_dir, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    model = chat.model
    artifacts = split_export(model.state_dict())
    parts = {"qformer": "qformer"}
    model.qformer.config.save_pretrained(out / "qformer")
    if chat.text.qformer:
        chat.text.qformer_tokenizer().save_pretrained(out / "qformer")
    tokenizer = chat.text.llm_tokenizer()
    if merge_lora:
        merged_llm(model.lm).save_pretrained(out / "llm")
        tokenizer.save_pretrained(out / "llm")   # with the chat template the run trained with
        parts["llm"] = "llm"
        del artifacts["lora"]
    elif hasattr(model.lm, "peft_config"):
        model.lm.save_pretrained(out / "lora")
    shutil.copyfile(run_dir / "recipe.json", out / "recipe.json")
    write_export(out, IV2Stage3.name, artifacts, read_export(run_dir)["encoder"], {"chat": parts})
    what = "LLM with the adapters merged" if merge_lora else "adapters as a peft directory"
    return f"{run_dir} -> {out}: vision tower, bridge, {what}"
