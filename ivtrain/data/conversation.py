"""Conversations -> LLM token ids with labels on the answer tokens only, rendered by the LLM's own chat template.

A conversation is the shard's `K.conversations.json`: turns `{"from": "system"|"human"|"gpt", "value": str}`, the
media placeholder (`<video>` or `<image>`, as LLaVA writes it) in a human turn. The placeholder becomes the media
markers of the recipe (`<Video>` ... `</Video>`, as VideoChat2) around the place where the vision tokens go.

Which tokens are answers is read off the template itself, so any template works that renders a conversation's
first k messages as a prefix of the whole: for assistant message k, the text between the render of the messages
before it with the generation prompt and the render of the messages up to it is its answer (with the template's
end-of-turn token, which the model must learn to emit). The rendered text is tokenized piece by piece, cut at the
vision place and at every answer boundary, so the prompt a chat renders at inference tokenizes exactly as it did
in training.

Longer than the text limit (vision tokens not counted): later exchanges are dropped whole; if the first exchange
alone is too long, its question is shortened from the start (its end, which usually holds the question, stays) when
that lets the answer fit whole, and otherwise the answer is cut at the limit (the question giving up tokens only
when it would leave less than half the limit to the answer). What was dropped is counted on the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

VISION = "\ue000"          # a private-use character: where the vision tokens go, removed before tokenizing
PLACEHOLDERS = {"video": "<video>", "image": "<image>"}
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
IGNORE = -100              # label of a token that carries no loss


class ConversationError(ValueError):
    """A conversation (or a chat template) that cannot be turned into training tokens."""


@dataclass(frozen=True)
class MediaMarkers:
    """Text around the vision tokens, per media kind (VideoChat2's)."""
    video: tuple[str, str] = ("<Video>", "</Video>")
    image: tuple[str, str] = ("<Image>", "</Image>")

    def wrap(self, media: str) -> str:
        start, end = self.video if media == "video" else self.image
        return f"{start}{VISION}{end}"


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]
    vision_at: int                      # the vision tokens go before ids[vision_at]
    truncated: bool = False
    exchanges_dropped: int = 0
    answer_tokens_dropped: int = 0
    answer_ends: list[int] = field(default_factory=list, repr=False)

    @property
    def answer_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor(self.ids, dtype=torch.long),
                "labels": torch.tensor(self.labels, dtype=torch.long)}


def to_messages(turns: list[dict], media: str, markers: MediaMarkers = MediaMarkers(),
                answered: bool = True, fold_system: bool = False) -> list[dict]:
    """Turns -> chat messages {role, content}, the media placeholder replaced by the markers around VISION (placed
    at the start of the first user message when no turn has a placeholder; a conversation that opens with an answer,
    as VideoChat2-IT's caption tasks do, gets a first user message of the media alone). answered: an answer is required (a
    training sample; a chat's question has none yet). fold_system: for templates without a system role, the
    system text opens the first question instead."""
    if not isinstance(turns, list) or not turns:
        raise ConversationError("a conversation is a non-empty list of {from, value} turns")
    messages = []
    for turn in turns:
        who, text = (turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
        if who not in ROLES or not isinstance(text, str):
            raise ConversationError(f"turn {turn!r:.80} is not {{from: system|human|gpt, value: text}}")
        messages.append({"role": ROLES[who], "content": text.replace(VISION, "")})
    if answered and not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("the conversation has no answer (gpt turn)")
    opening = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if opening is None:
        raise ConversationError("the conversation has no question and no answer, only a system turn")
    if messages[opening]["role"] == "assistant":   # an instruction answered without a question (captions)
        messages.insert(opening, {"role": "user", "content": ""})
    users = [m for m in messages if m["role"] == "user"]
    if fold_system:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        messages = [m for m in messages if m["role"] != "system"]
        if system:
            users[0]["content"] = f"{system}\n\n{users[0]['content']}"
    wrap = markers.wrap(media)
    for m in users:
        for placeholder in PLACEHOLDERS.values():
            if placeholder in m["content"]:
                m["content"] = m["content"].replace(placeholder, wrap, 1)
                break
        else:
            continue
        break
    else:
        users[0]["content"] = wrap + ("\n" + users[0]["content"] if users[0]["content"] else "")
    for m in users:   # any further placeholder is plain text: the media enters once
        for placeholder in PLACEHOLDERS.values():
            m["content"] = m["content"].replace(placeholder, "")
    return messages


PROBE = [{"from": "system", "value": "Answer briefly."}, {"from": "human", "value": "<video>\nWhat moves?"},
         {"from": "gpt", "value": "A square."}, {"from": "human", "value": "Where to?"}, {"from": "gpt", "value": "Left."}]


def check_template(tokenizer, markers: MediaMarkers = MediaMarkers()) -> bool:
    """Whether the chat template needs the system text folded into the first question (it has no system role);
    raises ConversationError when it cannot serve at all (answers not told from prompts, the media place lost)."""
    for fold in (False, True):
        try:
            enc = encode_messages(tokenizer, to_messages(PROBE, "video", markers, fold_system=fold))
        except ConversationError as e:
            if fold:
                raise ConversationError(f"the chat template cannot serve training: {e}") from None
            continue
        if len(enc.answer_ends) != 2:
            raise ConversationError("the chat template does not render every answer of a two-turn conversation")
        return fold
    return True


def end_of_turn(tokenizer, fold_system: bool = False) -> str:
    """What the template writes after an answer's text (`<|im_end|>`, `<|eot_id|>`, `</s>`), stripped: a chat stops
    there even when the tokenizer's end-of-sequence token is another (a base model's template)."""
    content = "Left."
    messages = to_messages([{"from": "human", "value": "Where?"}, {"from": "gpt", "value": content}], "video",
                           fold_system=fold_system)
    full = render(tokenizer, messages, False)
    start, end = answer_spans(tokenizer, messages, full)[0]
    answer = full[start:end]
    return answer[answer.find(content) + len(content):].strip() if content in answer else ""


def instruction_text(turns: list[dict]) -> str:
    """What the QFormer reads (InstructBLIP): the system turn when there is one, else the first question, without
    the media placeholder."""
    for who in ("system", "human"):
        for turn in turns:
            if isinstance(turn, dict) and turn.get("from") == who and isinstance(turn.get("value"), str):
                text = turn["value"]
                for placeholder in PLACEHOLDERS.values():
                    text = text.replace(placeholder, "")
                return text.strip()
    return ""


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:   # templates raise on roles they do not take (a system turn, two user turns in a row)
        raise ConversationError(f"the chat template refuses this conversation: {type(e).__name__}: {e}") from None


def answer_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Character spans of the answers in `full` (the render of all messages)."""
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(tokenizer, messages[:k], True), render(tokenizer, messages[:k + 1], False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ConversationError("the chat template does not render a conversation's first messages as a prefix "
                                    "of the whole, so answers cannot be told from prompts: give a template that "
                                    "does (llm.chat_template)")
        spans.append((len(before), len(upto)))
    return spans


def tokenize_pieces(tokenizer, text: str, spans: list[tuple[int, int]]) -> Encoded:
    """Token ids of `text` (holding one VISION) cut at the vision place and the answer spans; answers labelled."""
    at = text.find(VISION)
    cuts = sorted({0, len(text), at, at + 1, *[c for s in spans for c in s]})
    ids, labels, vision_at, ends = [], [], -1, []
    for a, b in zip(cuts, cuts[1:]):
        if a == at:
            vision_at = len(ids)
            continue
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"] if b > a else []
        answer = any(s <= a and b <= e for s, e in spans)
        ids += piece
        labels += piece if answer else [IGNORE] * len(piece)
        if any(b == e for _, e in spans):
            ends.append(len(ids))
    return Encoded(ids, labels, vision_at, answer_ends=ends)


def encode_messages(tokenizer, messages: list[dict]) -> Encoded:
    full = render(tokenizer, messages, False)
    if full.count(VISION) != 1:
        raise ConversationError("the chat template dropped or repeated the media place of the first question")
    return tokenize_pieces(tokenizer, full, answer_spans(tokenizer, messages, full))


def prompt_ids(tokenizer, messages: list[dict]) -> Encoded:
    """A chat's prompt (the messages so far and the generation prompt), tokenized as training tokenized it."""
    text = render(tokenizer, messages, True)
    if text.count(VISION) != 1:
        raise ConversationError("the chat template dropped or repeated the media place of the first question")
    return tokenize_pieces(tokenizer, text, [])


def _shorten_question(tokenizer, turns: list[dict], over: int) -> list[dict]:
    """The turns with the first question shortened by `over` tokens from its start; with the media placeholder in
    it, the longer text on either side of the placeholder gives them up."""
    turns = [dict(t) for t in turns]
    first = next((t for t in turns if t.get("from") == "human"), None)
    if first is None:   # the media alone opens the conversation: nothing to shorten
        return turns
    text = first["value"]
    placeholder = next((p for p in PLACEHOLDERS.values() if p in text), None)
    head, mark, tail = text.partition(placeholder) if placeholder else ("", "", text)
    side = tail if len(tail) >= len(head) else head
    ids = tokenizer(side, add_special_tokens=False)["input_ids"]
    shortened = tokenizer.decode(ids[over:]) if over < len(ids) else ""
    first["value"] = head + mark + shortened if side is tail else shortened + mark + tail
    return turns


def _first_exchange_within(tokenizer, turns, media, max_tokens, markers, fold_system) -> Encoded:
    """The first exchange alone, which is longer than `max_tokens`: its question is shortened when that lets the
    answer fit whole; otherwise the answer is cut at the limit, after the question gave up tokens only if it left
    no room for half the limit's worth of answer."""
    def encode(first):
        return encode_messages(tokenizer, to_messages(first, media, markers, fold_system=fold_system))

    def shortened(first, out, target):   # re-encoding a shortened question can move a token or two
        for _ in range(4):
            if len(out.ids) <= target:
                break
            first = _shorten_question(tokenizer, first, len(out.ids) - target)
            out = encode(first)
        return out

    first = turns[:next(i for i, t in enumerate(turns) if t.get("from") == "gpt") + 1]
    out = encode(first)
    answer = out.answer_tokens
    prompt = len(out.ids) - answer
    bare = len(encode(_shorten_question(tokenizer, first, len(out.ids))).ids) - answer
    if bare + answer <= max_tokens:
        out = shortened(first, out, max_tokens)
    elif prompt >= max_tokens - 1:
        out = shortened(first, out, max_tokens // 2 + answer)
    out = Encoded(out.ids[:max_tokens], out.labels[:max_tokens], min(out.vision_at, max_tokens))
    return out


def encode_conversation(tokenizer, turns: list[dict], media: str, max_tokens: int,
                        markers: MediaMarkers = MediaMarkers(), fold_system: bool = False) -> Encoded:
    """The conversation's tokens within `max_tokens` (see the module docstring); raises ConversationError when no
    answer token fits."""
    messages = to_messages(turns, media, markers, fold_system=fold_system)
    enc = encode_messages(tokenizer, messages)
    if len(enc.ids) <= max_tokens:
        return enc
    whole_answers = enc.answer_tokens
    kept = [e for e in enc.answer_ends if e <= max_tokens]
    if kept:   # the exchanges that fit, whole; later ones dropped
        cut = kept[-1]
        out = Encoded(enc.ids[:cut], enc.labels[:cut], enc.vision_at, truncated=True,
                      exchanges_dropped=len(enc.answer_ends) - len(kept))
    else:
        out = _first_exchange_within(tokenizer, turns, media, max_tokens, markers, fold_system)
        out.truncated, out.exchanges_dropped = True, len(enc.answer_ends) - 1
    if out.answer_tokens == 0:
        raise ConversationError(f"no answer token fits in {max_tokens} text tokens")
    out.answer_tokens_dropped = whole_answers - out.answer_tokens
    return out
