"""Something-Something V2 annotation JSON.

Each file is a JSON list: train/validation entries are {"id", "label", "template", "placeholders"},
test entries only {"id"}. `template` ("Putting [something] on a surface") is the class; `label` is the
template filled in with the objects. The split is not in the entries: it comes from the file name
(something-something-v2-{train,validation,test}.json) or the `split` argument. Videos are {id}.webm.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ivdata.curate.sources.base import SourceFormatError, make_row, normalise_split


def _split_from_name(path: Path) -> str | None:
    m = re.search(r"(train|validation|val|test)", path.stem.lower())
    return m.group(1) if m else None


def ssv2_class(template: str) -> str:
    """The class name as in labels.json: the template with its brackets removed."""
    return template.replace("[", "").replace("]", "")


def read_ssv2(path: str | Path, source: str = "ssv2", split: str | None = None) -> list[dict]:
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise SourceFormatError(f"{path}: an SSv2 annotation file is a JSON list, got {type(entries).__name__}")
    split_word = split or _split_from_name(path)
    if split_word is None:
        raise SourceFormatError(f"{path}: cannot tell the split from the file name; pass split=")
    rows = []
    for i, e in enumerate(entries):
        where = f"{path}[{i}]"
        if not isinstance(e, dict) or not str(e.get("id", "")).strip():
            raise SourceFormatError(f"{where}: entry without an id")
        template = e.get("template")
        label = ssv2_class(template) if template else None
        extra = {}
        if e.get("label"):
            extra["ssv2_caption"] = e["label"]
        if e.get("placeholders"):
            extra["placeholders"] = e["placeholders"]
        rows.append(make_row(source, str(e["id"]).strip(), None, None, normalise_split(split_word, where),
                             label, "ssv2", path, i, **extra))
    return rows
