"""Media lists as ingest rows: CSV, JSON Lines, JSON and Parquet, in the public datasets' own field names.

Each list is read in one of these layouts, told apart by its columns:
  webvid     videoid, contentUrl, name (the caption), duration, page_dir     (WebVid-2M/10M results_*.csv)
  internvid  YoutubeID, Start_timestamp, End_timestamp, Caption, ...scores   (InternVid-10M jsonl)
  generic    path | url | uri, caption, start, end, source, source_id, label, split; img2dataset / LAION
             lists are this layout: url (or URL) and caption (or TEXT)
A row becomes an ingest row: `path` or `url`, `source` (the row's own, else the one the command names, else
the layout's name: webvid, internvid, local),
`source_id`, `start`/`end` (seconds), `caption` (None when the list has no caption column, '' when this row's
is empty: recorded as a failed caption), and `list_file`/`list_line` (provenance). Its other fields are kept.

Where the files are: a generic row's relative path resolves against the list's folder, or `media_root` when
given. WebVid and InternVid rows name videos by id: with `media_root` the file is found under it by id
(`{page_dir}/{videoid}.*` or any `{videoid}.*`; `{YoutubeID}.*`), a missing one becoming a recorded failure
of that video; without it a WebVid row is downloaded from its contentUrl, and an InternVid list is refused.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Iterator

LIST_EXTS = {".csv", ".jsonl", ".json", ".parquet"}
CAPTION_COLUMNS = ("caption", "TEXT", "text", "Caption")     # a generic list's caption, by these names


class SourceError(ValueError):
    pass


def is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) of a CSV (header row), JSON Lines, JSON list or Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for line, r in enumerate(csv.DictReader(f), start=2):
                yield line, {k.strip(): v for k, v in r.items() if k is not None}
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if text.strip():
                    try:
                        yield line, json.loads(text)
                    except json.JSONDecodeError as e:
                        raise SourceError(f"{path}:{line}: not a JSON object ({e})") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq
        for i, r in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, r
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else data.get("videos", [])
        yield from enumerate(rows, start=1)


def layout_of(columns: set[str]) -> str:
    if {"videoid", "contentUrl", "name"} <= columns:
        return "webvid"
    if {"YoutubeID", "Start_timestamp", "End_timestamp"} <= columns:
        return "internvid"
    return "generic"


_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")


def seconds(value, where: str, name: str) -> float | None:
    """Seconds from a number, a numeric string, or a clock time (HH:MM:SS.mmm, MM:SS)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    m = _CLOCK.match(text)
    if m:
        return int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    try:
        return float(text)
    except ValueError:
        raise SourceError(f"{where}: {name} {value!r} is neither seconds nor HH:MM:SS.mmm") from None


def _caption(rec: dict, columns: tuple[str, ...]) -> str | None:
    """The row's caption ('' when its caption field is empty), or None when it has no caption field."""
    for c in columns:
        if c in rec:
            v = rec[c]
            return "" if v is None else str(v).strip()
    return None


class _MediaRoot:
    """Video files under --media-root, found by relative path or file stem (built on first use)."""

    def __init__(self, root: Path | None):
        self.root = root
        self._index = None

    def find(self, candidates: list[str]) -> Path | None:
        from ivdata.curate.sources.base import VideoIndex
        if self._index is None:
            self._index = VideoIndex(self.root)
        return self._index.find(candidates)


def read_list(path: Path, source: str | None = None, media_root: Path | None = None) -> list[dict]:
    """Every row of a list file as an ingest row (see the module docstring)."""
    path = Path(path)
    root = _MediaRoot(Path(media_root)) if media_root else None
    out: list[dict] = []
    layout = None
    for line, rec in records(path):
        where = f"{path}:{line}"
        if not isinstance(rec, dict):
            raise SourceError(f"{where}: a list row is an object with named fields, not {type(rec).__name__}")
        rec = {str(k).strip(): v for k, v in rec.items() if k is not None}
        layout = layout or layout_of(set(rec))
        row = _READERS[layout](rec, where, root, path.parent)
        row["source"] = str(rec.get("source") or "") or source or (layout if layout != "generic" else "local")
        row.update(list_file=str(path), list_line=line)
        out.append(row)
    return out


def _webvid(rec: dict, where: str, root: _MediaRoot | None, _list_dir: Path) -> dict:
    sid = str(rec["videoid"]).strip()
    row = {"source_id": sid, "caption": _caption(rec, ("name",)),
           **{k: v for k, v in rec.items() if k not in ("videoid", "contentUrl", "name", "source")}}
    if root is not None:
        page = str(rec.get("page_dir") or "").strip()
        found = root.find(([f"{page}/{sid}.mp4"] if page else []) + [sid])
        row["path"] = str(found or root.root / (f"{page}/{sid}.mp4" if page else f"{sid}.mp4"))
    elif is_url(str(rec.get("contentUrl") or "")):
        row["url"] = str(rec["contentUrl"]).strip()
    else:
        raise SourceError(f"{where}: WebVid row {sid} has no http(s) contentUrl; give --media-root with the files")
    return row


def _internvid(rec: dict, where: str, root: _MediaRoot | None, _list_dir: Path) -> dict:
    sid = str(rec["YoutubeID"]).strip()
    if root is None:
        raise SourceError(f"{where}: an InternVid list names YouTube ids, not files: give --media-root, the folder "
                          "holding {YoutubeID}.mp4 (any video extension, any sub-folder)")
    start = seconds(rec.get("Start_timestamp"), where, "Start_timestamp")
    end = seconds(rec.get("End_timestamp"), where, "End_timestamp")
    found = root.find([sid])
    return {"path": str(found or root.root / f"{sid}.mp4"), "source_id": sid, "start": start, "end": end,
            "caption": _caption(rec, ("Caption",)), "id_namespace": "youtube",
            **{k: v for k, v in rec.items()
               if k not in ("YoutubeID", "Start_timestamp", "End_timestamp", "Caption", "source")}}


def _generic(rec: dict, where: str, root: _MediaRoot | None, list_dir: Path) -> dict:
    row = {k: v for k, v in rec.items() if k not in ("path", "url", "uri", "URL", *CAPTION_COLUMNS, "source")}
    loc = rec.get("uri") or rec.get("path") or rec.get("url") or rec.get("URL")
    if not loc:
        raise SourceError(f"{where}: row has no path, url or uri")
    loc = str(loc).strip()
    if is_url(loc):
        row["url"] = loc
    else:
        p = Path(loc)
        row["path"] = str(p if p.is_absolute() else ((root.root if root else list_dir) / p))
    row["caption"] = _caption(rec, CAPTION_COLUMNS)
    row["start"] = seconds(rec.get("start"), where, "start")
    row["end"] = seconds(rec.get("end"), where, "end")
    return row


_READERS = {"webvid": _webvid, "internvid": _internvid, "generic": _generic}


def sidecar_caption(media: Path) -> tuple[str | None, dict, list[Path]]:
    """(caption, metadata, sidecar files) of a media file from `<stem>.txt` and `<stem>.json` beside it
    (img2dataset's folder layout): the .txt is the caption, the .json's `caption` (or `text`) too when there
    is no .txt, and its other fields are metadata."""
    caption, meta, used = None, {}, []
    txt, js = media.with_suffix(".txt"), media.with_suffix(".json")
    if js.is_file():
        used.append(js)
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SourceError(f"{js}: unreadable sidecar ({e})") from None
        if isinstance(data, dict):
            for c in ("caption", "text", "TEXT"):
                if c in data:
                    caption = "" if data[c] is None else str(data[c]).strip()
                    break
            meta = {(f"orig_{k}" if k in ("path", "url", "uri") else k): v for k, v in data.items()
                    if k not in ("caption", "text", "TEXT") and isinstance(v, (str, int, float, bool))}
    if txt.is_file():
        used.append(txt)
        caption = txt.read_text(encoding="utf-8", errors="replace").strip()
    return caption, meta, used
