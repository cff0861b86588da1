"""ingest: register videos (local files, directories, globs, CSV/JSONL lists, http(s) URLs).

needs: nothing. produces: videos (id, source, provenance, sha256, bytes), spans from source lists.
video_id is derived from (source, source_id or uri), so re-ingesting the same list is a no-op and the
same bytes under two sources stay two rows that share a sha256 (exact dedup and provenance both work).
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ivdata.corpus import Corpus
from ivdata.manifest import Manifest, utcnow
from ivdata.stages.base import Stage, StageStats, failed

VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp", ".wmv"}
LIST_EXTS = {".csv", ".jsonl", ".json"}
KNOWN = {"path", "url", "uri", "source", "source_id", "label", "split", "start", "end"}


class SourceError(ValueError):
    pass


def video_id_for(source: str, key: str) -> str:
    return "v" + hashlib.sha1(f"{source}\0{key}".encode()).hexdigest()[:16]


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def expand_sources(sources: Iterable[str], source: str = "local") -> list[dict]:
    """Turn command-line sources into rows (dicts with the keys the ingest stage accepts)."""
    rows: list[dict] = []
    for s in sources:
        s = str(s)
        p = Path(s)
        if _is_url(s):
            rows.append({"url": s, "source": source})
        elif p.is_dir():
            rows += [{"path": str(f), "source": source} for f in sorted(p.rglob("*"))
                     if f.is_file() and f.suffix.lower() in VIDEO_EXTS]
        elif p.is_file() and p.suffix.lower() in LIST_EXTS:
            rows += [{"source": source, **r} for r in read_list(p)]
        elif p.is_file():
            rows.append({"path": str(p), "source": source})
        elif any(ch in s for ch in "*?["):
            rows += [{"path": f, "source": source} for f in sorted(glob.glob(s, recursive=True)) if Path(f).is_file()]
        else:
            raise SourceError(f"source {s!r}: no such file, directory or URL")
    return rows


def read_list(path: Path) -> list[dict]:
    """CSV (header row) or JSONL/JSON list; relative paths resolve against the list's folder."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = [dict(r) for r in csv.DictReader(f)]
    elif path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else data.get("videos", [])
    out = []
    for i, r in enumerate(rows):
        r = {k.strip(): v for k, v in r.items() if k is not None}
        loc = r.pop("uri", None) or r.get("path") or r.get("url")
        if not loc:
            raise SourceError(f"{path}: row {i + 1} has no path, url or uri")
        if _is_url(str(loc)):
            r.pop("path", None)
            r["url"] = loc
        else:
            r.pop("url", None)
            lp = Path(loc)
            r["path"] = str(lp if lp.is_absolute() else (path.parent / lp))
        out.append(r)
    return out


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    return float(v)


@dataclass
class IngestItem:
    video_id: str
    source: str
    source_id: str | None
    uri: str
    path: str | None
    url: str | None
    label: str | None
    split: str | None
    extra: dict


class IngestStage(Stage):
    name = "ingest"
    produces = ("videos", "spans")

    def __init__(self, corpus: Corpus, rows: list[dict], max_bytes: int = 8 << 30, timeout_s: float = 60.0,
                 max_seconds: float = 3600.0):
        super().__init__(corpus)
        self._rows = rows
        self.nrows = len(rows)
        self.max_bytes, self.timeout_s, self.max_seconds = max_bytes, timeout_s, max_seconds
        self._items, self._spans = self._group(rows)

    def _group(self, rows: list[dict]) -> tuple[dict[str, IngestItem], list[dict]]:
        items: dict[str, IngestItem] = {}
        spans = []
        for r in rows:
            source = str(r.get("source") or "local")
            url = r.get("url")
            uri = url if url else str(Path(r["path"]).resolve())
            sid = r.get("source_id")
            sid = str(sid) if sid not in (None, "") else None
            vid = video_id_for(source, sid or uri)
            if vid not in items:
                extra = {k: v for k, v in r.items() if k not in KNOWN and v not in (None, "")}
                items[vid] = IngestItem(vid, source, sid, uri, None if url else uri, url,
                                        r.get("label") or None, r.get("split") or None, extra)
            start, end = _num(r.get("start")), _num(r.get("end"))
            if start is not None and end is not None:
                if end <= start:
                    raise SourceError(f"span end {end} <= start {start} for {uri}")
                spans.append({"video_id": vid, "start_s": start, "end_s": end, "label": r.get("label") or None})
        return items, spans

    def pending(self, m: Manifest, retry_failed: bool) -> list[IngestItem]:
        have = {r[0]: (r[1], r[2]) for r in m.execute("SELECT video_id, status, failed_stage FROM videos").fetchall()}
        todo = []
        for vid, item in self._items.items():
            st = have.get(vid)
            if st is None or st[0] == "downloading" or (retry_failed and st[0] == "failed" and st[1] == "ingest"):
                todo.append(item)
        return todo

    def work(self, item: IngestItem) -> dict:
        path = item.path
        if item.url:
            path = str(download(item.url, self.corpus.downloads_dir, item.video_id, self.max_bytes,
                                self.timeout_s, self.max_seconds))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"file not found: {path}")
        h, n = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        return {"path": path, "sha256": h.hexdigest(), "bytes": n}

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        rows = []
        for item, res in done:
            row = {"video_id": item.video_id, "source": item.source, "source_id": item.source_id, "uri": item.uri,
                   "path": item.path, "sha256": None, "bytes": None, "label": item.label, "split": item.split,
                   "extra": json.dumps(item.extra) if item.extra else None, "ingested_at": utcnow(),
                   "status": "ingested", "error": None, "failed_stage": None}
            if failed(res):
                row.update(status="failed", error=res.reason, failed_stage="ingest")
                stats.failed += 1
            else:
                row.update(res)
                stats.ok += 1
            rows.append(row)
        m.insert_rows("videos", rows)

    def finish(self, m: Manifest, stats: StageStats) -> None:
        # Spans of every listed video, new or already known (a list may add spans to a known video).
        m.insert_rows("spans", self._spans, mode="INSERT OR IGNORE")
        stats.skipped = len(self._items) - stats.pending
        stats.extra["spans"] = len(self._spans)


def download(url: str, dest_dir: Path, video_id: str, max_bytes: int, timeout_s: float, max_seconds: float) -> Path:
    """Resumable download: bytes land in <id>.part (continued with a Range request), renamed when whole."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
    suffix = suffix if suffix in VIDEO_EXTS else ".mp4"
    final = dest_dir / f"{video_id}{suffix}"
    if final.exists():
        return final
    part = dest_dir / f"{video_id}{suffix}.part"
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "ivkit", **({"Range": f"bytes={have}-"} if have else {})})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            if have and resp.status != 206:   # server ignored the range: start over
                have = 0
            total = resp.headers.get("Content-Length")
            if total is not None and have + int(total) > max_bytes:
                raise ValueError(f"download larger than the limit: {have + int(total)} > {max_bytes} bytes")
            with open(part, "ab" if have else "wb") as f:
                n = have
                while chunk := resp.read(1 << 16):
                    n += len(chunk)
                    if n > max_bytes:
                        raise ValueError(f"download exceeded the size limit of {max_bytes} bytes")
                    if time.monotonic() - t0 > max_seconds:
                        raise TimeoutError(f"download exceeded the time limit of {max_seconds:.0f} s")
                    f.write(chunk)
    except urllib.error.HTTPError as e:
        raise ValueError(f"HTTP {e.code} for {url}") from e
    except urllib.error.URLError as e:
        raise ValueError(f"cannot fetch {url}: {e.reason}") from e
    os.replace(part, final)
    return final


def ingest_rows(corpus: Corpus, rows: list[dict], workers: int = 0, retry_failed: bool = False, **kw) -> StageStats:
    """Python API: register rows with keys path|url, source, source_id, label, split, start, end
    (any other keys go to videos.extra)."""
    from ivdata.stages.base import run_stage
    return run_stage(IngestStage(corpus, rows, **kw), workers=workers, retry_failed=retry_failed)
