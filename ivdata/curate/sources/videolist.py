"""A plain list of extra videos (CSV with a header, or JSON Lines): the unlabelled part of a mix.

Columns (any order): `youtube_id` or `video_id` or `path` (one is required), optional `start`, `end`,
`split` (default train), `label`. K-Mash2M adds 844K YouTube videos selected for diversity to
K-Mash1.1M; such a selection is handed to ivkit as a list like this one.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ivdata.curate.sources.base import SourceFormatError, extra_columns, make_row, normalise_split, parse_seconds

ID_COLUMNS = ("youtube_id", "video_id", "path")


def _records(path: Path):
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if text.strip():
                    try:
                        yield line, json.loads(text)
                    except json.JSONDecodeError as e:
                        raise SourceFormatError(f"{path}:{line}: not a JSON object ({e})") from None
    else:
        with open(path, newline="", encoding="utf-8") as f:
            yield from enumerate(csv.DictReader(f), start=2)


def read_videolist(path: str | Path, source: str = "extra", split: str | None = None) -> list[dict]:
    path = Path(path)
    rows = []
    for line, rec in _records(path):
        where = f"{path}:{line}"
        col = next((c for c in ID_COLUMNS if str(rec.get(c) or "").strip()), None)
        if col is None:
            raise SourceFormatError(f"{where}: needs one of {ID_COLUMNS}")
        sid = str(rec[col]).strip()
        namespace = "youtube" if col == "youtube_id" else source
        extra = extra_columns(rec, (*ID_COLUMNS, "start", "end", "split", "label"))
        rows.append(make_row(source, sid, parse_seconds(rec.get("start"), where, "start"),
                             parse_seconds(rec.get("end"), where, "end"),
                             normalise_split(split or rec.get("split") or "train", where),
                             (str(rec.get("label") or "").strip() or None), namespace, path, line, **extra))
    return rows
