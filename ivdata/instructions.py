"""Instruction data files (LLaVA and VideoChat2-IT layouts) as conversations: parsed, checked, given stable ids.

LLaVA:        [{"id": ..., "image": "coco/x.jpg" | "video": "clips/y.mp4",
                "conversations": [{"from": "human", "value": "<image>\\nWhat ...?"}, {"from": "gpt", "value": "..."}]}]
VideoChat2-IT: [{"video": "y.mp4" | "image": "x.jpg", "QA": [{"i": instruction, "q": question, "a": answer}, ...]}]
A file is a JSON list (or JSON Lines) of such entries. An entry may also give `start`/`end` (seconds or
HH:MM:SS.mmm: the span of the video it is about) and `task`.

Turns are kept as {"from": "system" | "human" | "gpt", "value": str}, every turn of a multi-turn conversation.
A VideoChat2-IT entry becomes what VideoChat2 trains on: its first instruction `i` as the system turn, then per
QA the question (when there is one) from human and the answer from gpt.

A conversation is well formed when: it has turns; every turn's role is one of those three and its value a
non-empty string; a system turn comes only first; human and gpt alternate; it ends with gpt; and it opens with
human, or with gpt right after a system turn (an instruction with no question). An entry that breaks a rule,
names no media (text-only) or names several, is recorded as failed with the rule it broke.

Ids: `c` + 16 hex digits of sha1(dataset, position in the file, the entry): the same file imports to the
same ids, so a rerun (after a kill, or of a grown file) records nothing twice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ivdata.lists import SourceError, seconds

FORMATS = ("llava", "videochat2")
ROLES = ("system", "human", "gpt")


class InstructionFileError(ValueError):
    """A file that is not an instruction file at all (not JSON, not a list): nothing is imported."""


@dataclass
class Entry:
    conversation_id: str
    entry_index: int
    entry_id: str | None = None
    media: str | None = None          # image | video
    media_path: str | None = None     # as the entry names it
    start_s: float | None = None
    end_s: float | None = None
    task: str | None = None
    turns: list[dict] | None = None
    error: str | None = None


def conversation_id_for(dataset: str, index: int, raw) -> str:
    blob = json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str)
    return "c" + hashlib.sha1(f"{dataset}\0{index}\0{blob}".encode()).hexdigest()[:16]


def read_entries(path: str | Path, fmt: str, dataset: str, task: str | None = None) -> list[Entry]:
    """Every entry of the file, each parsed or carrying the reason it cannot be imported."""
    if fmt not in FORMATS:
        raise InstructionFileError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InstructionFileError(f"{path}: unreadable ({e.strerror or e})") from None
    try:
        if path.suffix.lower() == ".jsonl":
            raw_entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raw_entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise InstructionFileError(f"{path}: not JSON ({e})") from None
    if not isinstance(raw_entries, list):
        raise InstructionFileError(f"{path}: an instruction file is a JSON list of entries, not a "
                                   f"{type(raw_entries).__name__}")
    return [parse_entry(raw, i, fmt, dataset, task) for i, raw in enumerate(raw_entries)]


def parse_entry(raw, index: int, fmt: str, dataset: str, task: str | None = None) -> Entry:
    entry = Entry(conversation_id_for(dataset, index, raw), index)
    if not isinstance(raw, dict):
        entry.error = f"entry is a {type(raw).__name__}, not an object"
        return entry
    entry.entry_id = str(raw["id"]) if raw.get("id") not in (None, "") else None
    entry.task = str(raw["task"]) if raw.get("task") else task
    entry.error = _media(raw, entry) or _span(raw, entry)
    if entry.error:
        return entry
    turns, error = (llava_turns(raw) if fmt == "llava" else videochat2_turns(raw))
    entry.error = error or check_turns(turns)
    if entry.error is None:
        entry.turns = [{"from": t["from"], "value": t["value"]} for t in turns]
    return entry


def _media(raw: dict, entry: Entry) -> str | None:
    named = [k for k in ("image", "video") if raw.get(k) not in (None, "", [])]
    if not named:
        return "names no image or video (text-only entries are not imported: a sample needs media)"
    if len(named) > 1:
        return "names both an image and a video (one media per sample)"
    value = raw[named[0]]
    if isinstance(value, list):
        if len(value) != 1:
            return f"names {len(value)} {named[0]}s (one media per sample)"
        value = value[0]
    if not isinstance(value, str):
        return f"its {named[0]} is a {type(value).__name__}, not a path"
    entry.media, entry.media_path = named[0], value.strip()
    return None


def _span(raw: dict, entry: Entry) -> str | None:
    try:
        start = seconds(raw.get("start"), f"entry {entry.entry_index}", "start")
        end = seconds(raw.get("end"), f"entry {entry.entry_index}", "end")
    except SourceError as e:
        return str(e)
    if (start is None) != (end is None):
        return "gives one of start and end: a span needs both"
    if start is not None:
        if entry.media != "video":
            return "gives a span of an image"
        if end <= start:
            return f"span end {end:g} <= start {start:g}"
    entry.start_s, entry.end_s = start, end
    return None


def llava_turns(raw: dict) -> tuple[list | None, str | None]:
    turns = raw.get("conversations")
    if not isinstance(turns, list):
        return None, "has no `conversations` list"
    return turns, None


def videochat2_turns(raw: dict) -> tuple[list | None, str | None]:
    qa = raw.get("QA")
    if not isinstance(qa, list) or not qa:
        return None, "has no `QA` list (VideoChat2-IT entries are {video|image, QA: [{i, q, a}]})"
    if not all(isinstance(x, dict) for x in qa):
        return None, "a QA item is not an object"
    turns = []
    instruction = qa[0].get("i")
    if isinstance(instruction, str) and instruction.strip():
        turns.append({"from": "system", "value": instruction})
    for n, x in enumerate(qa):
        if "a" not in x:
            return None, f"QA item {n} has no answer `a`"
        if x.get("q") not in (None, ""):
            turns.append({"from": "human", "value": x["q"]})
        turns.append({"from": "gpt", "value": x["a"]})
    return turns, None


def check_turns(turns: list) -> str | None:
    """Why these turns are not a well-formed conversation (the rules in the module docstring), or None."""
    if not turns:
        return "has no turns"
    prev = None
    for n, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            return f"turn {n} is not a {{from, value}} object"
        role, value = t["from"], t["value"]
        if role not in ROLES:
            return f"turn {n} is from {role!r}: turns are from {', '.join(map(repr, ROLES))}"
        if not isinstance(value, str) or not value.strip():
            return f"turn {n} ({role}) has an empty value"
        if role == "system" and n > 0:
            return f"turn {n} is a system turn after the first"
        if role != "system":
            if prev is None and role == "gpt" and n == 0:
                return "opens with gpt: the first turn is from human (or a system instruction)"
            if role == prev:
                return f"turns {n - 1} and {n} are both from {role}: human and gpt alternate"
            prev = role
    if prev != "gpt":
        return "does not end with a gpt turn (nothing to learn from)"
    return None
