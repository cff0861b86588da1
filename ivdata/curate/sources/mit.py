"""Moments in Time annotation CSVs (trainingSet.csv, validationSet.csv).

No header; each line is `relative/path.mp4,label,num_agree,num_disagree` (3-second clips; the path
starts with the class folder). The split comes from the file name or the `split` argument.
source_id is the relative path: it is the only id MiT gives a video.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from ivdata.curate.sources.base import SourceFormatError, make_row, normalise_split


def _split_from_name(path: Path) -> str | None:
    m = re.search(r"(training|train|validation|val|testing|test)", path.stem.lower())
    return m.group(1) if m else None


def read_mit(path: str | Path, source: str = "mit", split: str | None = None) -> list[dict]:
    path = Path(path)
    split_word = split or _split_from_name(path)
    if split_word is None:
        raise SourceFormatError(f"{path}: cannot tell the split from the file name; pass split=")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for line, rec in enumerate(csv.reader(f), start=1):
            if not rec or not "".join(rec).strip():
                continue
            where = f"{path}:{line}"
            if line == 1 and rec[0].strip().lower() in ("filename", "video", "path"):
                continue  # a header some re-packagings add
            rel = rec[0].strip()
            if "/" not in rel and len(rec) < 2:
                raise SourceFormatError(f"{where}: expected `class/file.mp4,label,...`, got {rec}")
            label = rec[1].strip() if len(rec) > 1 and rec[1].strip() else rel.split("/")[0]
            extra = {}
            if len(rec) >= 4:
                try:
                    extra = {"num_agree": int(rec[2]), "num_disagree": int(rec[3])}
                except ValueError:
                    raise SourceFormatError(f"{where}: agree/disagree counts {rec[2:4]} are not integers") from None
            rows.append(make_row(source, rel, None, None, normalise_split(split_word, where), label,
                                 "mit", path, line, **extra))
    return rows
