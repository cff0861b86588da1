"""Kinetics-400 / 600 / 700 annotation CSVs.

Header `label,youtube_id,time_start,time_end,split` (test files of some releases have no label column;
Kinetics-700-2020 adds `is_cc`). One row = one 10 s span of one YouTube video; splits are written
train / validate / test. Extra columns are kept as metadata.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ivdata.curate.sources.base import SourceFormatError, extra_columns, make_row, normalise_split, parse_seconds

REQUIRED = ("youtube_id", "time_start", "time_end")


def read_kinetics(path: str | Path, source: str = "k400", split: str | None = None) -> list[dict]:
    """Rows of a Kinetics CSV. `split` overrides a missing split column (e.g. for label-less test CSVs)."""
    path = Path(path)
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in cols]
        if missing or ("split" not in cols and split is None):
            raise SourceFormatError(
                f"{path}: not a Kinetics CSV: header {cols} lacks {missing or ['split']} "
                "(expected label,youtube_id,time_start,time_end,split)")
        reader.fieldnames = cols
        for line, rec in enumerate(reader, start=2):
            where = f"{path}:{line}"
            yid = (rec.get("youtube_id") or "").strip()
            if not yid:
                raise SourceFormatError(f"{where}: empty youtube_id")
            start = parse_seconds(rec.get("time_start"), where, "time_start")
            end = parse_seconds(rec.get("time_end"), where, "time_end")
            extra = extra_columns(rec, (*REQUIRED, "label", "split"))
            rows.append(make_row(source, yid, start, end,
                                 normalise_split(rec.get("split") or split, where),
                                 (rec.get("label") or "").strip() or None, "youtube", path, line, **extra))
    return rows
