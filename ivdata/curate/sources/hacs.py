"""HACS annotations: HACS Clips (CSV) and HACS Segments (ActivityNet-style JSON).

HACS Clips v1.1 CSV header: `classname,youtube_id,subset,start,end,label`, where `label` is 1 for a
positive (the action happens in the 2 s span) and -1 for a negative sampled from the same video.
Negatives are kept (they are real footage) with `hacs_positive=False`, so a recipe may select on it.
A .json path is read as HACS Segments, which uses the ActivityNet v1.3 layout.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ivdata.curate.sources.activitynet import read_activitynet
from ivdata.curate.sources.base import SourceFormatError, make_row, normalise_split, parse_seconds

REQUIRED = ("classname", "youtube_id", "subset", "start", "end")


def read_hacs(path: str | Path, source: str = "hacs", split: str | None = None) -> list[dict]:
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_activitynet(path, source=source, split=split)
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in cols]
        if missing:
            raise SourceFormatError(f"{path}: not a HACS Clips CSV: header {cols} lacks {missing} "
                                    "(expected classname,youtube_id,subset,start,end,label)")
        reader.fieldnames = cols
        for line, rec in enumerate(reader, start=2):
            where = f"{path}:{line}"
            yid = (rec["youtube_id"] or "").strip()
            if not yid:
                raise SourceFormatError(f"{where}: empty youtube_id")
            extra = {}
            if rec.get("label") not in (None, ""):
                if rec["label"].strip() not in ("1", "-1"):
                    raise SourceFormatError(f"{where}: label {rec['label']!r} is neither 1 nor -1")
                extra["hacs_positive"] = rec["label"].strip() == "1"
            rows.append(make_row(source, yid, parse_seconds(rec["start"], where, "start"),
                                 parse_seconds(rec["end"], where, "end"),
                                 normalise_split(split or rec["subset"], where),
                                 rec["classname"].strip() or None, "youtube", path, line, **extra))
    return rows
