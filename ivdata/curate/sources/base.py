"""What every source reader returns, and how rows are matched to video files on disk.

A reader turns one annotation file into rows (plain dicts) that ingest accepts as they are:
  source      short dataset name: k400, k600, k700, ssv2, mit, anet, hacs, ...
  source_id   the dataset's own id of the *video* (YouTube id, SSv2 numeric id, MiT relative path)
  start, end  the annotated span in seconds, or None for a whole video
  split       train | val | test (normalised from each dataset's own words)
  label       the class name, kept as metadata (training shards omit it by default)
  path        the local file, filled in by `resolve_paths` (None while unresolved or missing)
and extra keys that ingest stores in videos.extra: `id_namespace` (ids in one namespace name the same
video across datasets: every YouTube-derived dataset uses "youtube"), `annotation_file` and
`annotation_line` (provenance: where exactly this row came from).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ivdata.splits import CANONICAL, canonical_split

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")



class SourceFormatError(ValueError):
    """An annotation file that does not look like the format it was read as (says file and line)."""


def normalise_split(raw: str | None, where: str) -> str:
    """A dataset file's split word, canonical (ivdata/splits.py); an annotation file with a word we do not
    know is not the format it was read as, so it is an error here (plain ingest lists only warn)."""
    if raw is None or str(raw).strip() == "":
        raise SourceFormatError(f"{where}: empty split")
    split = canonical_split(raw)
    if split is None:
        raise SourceFormatError(f"{where}: unknown split {raw!r} (expected one of {sorted(CANONICAL)})")
    return split


def parse_seconds(raw, where: str, name: str) -> float | None:
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SourceFormatError(f"{where}: {name} {raw!r} is not a number of seconds") from None
    if value < 0:
        raise SourceFormatError(f"{where}: {name} {value} is negative")
    return value


def make_row(source: str, source_id: str, start: float | None, end: float | None, split: str,
             label: str | None, namespace: str, annotation_file: Path, line: int, **extra) -> dict:
    if start is not None and end is not None and end <= start:
        raise SourceFormatError(f"{annotation_file}:{line}: span end {end} <= start {start}")
    row = {"source": source, "source_id": source_id, "start": start, "end": end, "split": split,
           "label": label, "path": None, "id_namespace": namespace,
           "annotation_file": str(annotation_file), "annotation_line": line}
    clash = {"path", "url", "uri"} & set(extra)
    if clash:  # ingest reads these as where the file is: a dataset's own fields must not pose as them
        raise SourceFormatError(f"{annotation_file}:{line}: extra field(s) {sorted(clash)} are reserved")
    row.update(extra)
    return row


def extra_columns(rec: dict, used: tuple[str, ...]) -> dict:
    """A file's other columns, kept as metadata; `path`/`url`/`uri` renamed so ingest never reads them
    as the file's location."""
    return {(f"orig_{k}" if k in ("path", "url", "uri") else k): v for k, v in rec.items()
            if k and k not in used}


def source_key(row: dict) -> str:
    """The id that names the same underlying video across datasets (e.g. youtube:abc123)."""
    return f"{row.get('id_namespace') or row['source']}:{row['source_id']}"


# ------------------------------------------------------------------------------ files on disk
class VideoIndex:
    """Every video file under a directory, found once, looked up by relative path or by file stem.

    Datasets are stored in many layouts (flat, per class, per split); matching on the stem makes the
    layout irrelevant. A stem found in two places is ambiguous and is reported, never guessed.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"videos dir {self.root} does not exist")
        self.by_rel: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        self.ambiguous: set[str] = set()
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                if not f.lower().endswith(VIDEO_EXTENSIONS) or f.startswith("."):
                    continue
                p = Path(dirpath) / f
                self.by_rel[p.relative_to(self.root).as_posix()] = p
                stem = os.path.splitext(f)[0]
                if stem in self.by_stem and self.by_stem[stem] != p:
                    self.ambiguous.add(stem)
                self.by_stem.setdefault(stem, p)

    def __len__(self) -> int:
        return len(self.by_rel)

    def find(self, candidates: list[str]) -> Path | None:
        """First candidate that names a file: a relative path (with extension) or a bare stem."""
        for c in candidates:
            if c in self.by_rel:
                return self.by_rel[c]
            stem = c if not c.lower().endswith(VIDEO_EXTENSIONS) else os.path.splitext(os.path.basename(c))[0]
            if stem in self.by_stem and stem not in self.ambiguous:
                return self.by_stem[stem]
        return None


def file_candidates(row: dict) -> list[str]:
    """The file names a dataset's videos are commonly stored under, most specific first."""
    sid, ns = str(row["source_id"]), row.get("id_namespace")
    names: list[str] = []
    if row.get("start") is not None and row.get("end") is not None and ns == "youtube":
        # Kinetics downloaders: {youtube_id}_{start:06d}_{end:06d}.mp4
        names.append(f"{sid}_{int(row['start']):06d}_{int(row['end']):06d}")
    if row["source"] == "mit":
        names.append(sid)  # a relative path such as "applauding/yt-abc_12.mp4"
    if ns == "youtube":
        names.append(f"v_{sid}")  # ActivityNet / HACS releases
    names.append(sid)
    return names


@dataclass
class ResolveReport:
    found: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)
    missing_examples: dict = field(default_factory=dict)

    def summary(self) -> dict:
        sources = sorted(set(self.found) | set(self.missing))
        return {s: {"found": self.found[s], "missing": self.missing[s],
                    "missing_examples": self.missing_examples.get(s, [])} for s in sources}


def resolve_paths(rows: list[dict], videos_dir: str | Path | VideoIndex, report: ResolveReport | None = None,
                  max_examples: int = 5) -> ResolveReport:
    """Fill each row's `path` from files under videos_dir (in place); count what is missing per source."""
    index = videos_dir if isinstance(videos_dir, VideoIndex) else VideoIndex(videos_dir)
    report = report or ResolveReport()
    for row in rows:
        candidates = file_candidates(row)
        path = index.find(candidates)
        row["path"] = str(path) if path else None
        # A Kinetics-style trimmed file *is* the annotated span: its span in the file starts at 0.
        row["file_is_span"] = bool(path and row.get("start") is not None and row.get("end") is not None
                                   and row.get("id_namespace") == "youtube" and path.stem == candidates[0]
                                   and candidates[0] != str(row["source_id"]))
        if path:
            report.found[row["source"]] += 1
        else:
            report.missing[row["source"]] += 1
            ex = report.missing_examples.setdefault(row["source"], [])
            if len(ex) < max_examples:
                ex.append(row["source_id"])
    return report
