"""ingest: register media (local files, directories, globs, CSV/JSONL/JSON/Parquet lists, http(s) URLs).

needs: nothing. produces: videos (id, source, provenance, media kind, sha256, bytes), spans and
source_captions from source lists. video_id is derived from (source, source_id or uri), so re-ingesting
the same list is a no-op and the same bytes under two sources stay two rows that share a sha256 (exact
dedup and provenance both work). Images are media rows too (`media = 'image'`): told from videos by the
file name's extension, or by their first bytes where the name has none (ivdata/media/image.py). Lists with
captions (WebVid, InternVid, img2dataset, generic; ivdata/lists.py) and sidecar captions (`x.jpg` + `x.txt`
or `x.json`) go to `source_captions`, a row whose caption is empty recorded there as a failed caption.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ivdata.corpus import Corpus
from ivdata.fsutil import hash_file, stamp
from ivdata.links import attach_source_captions
from ivdata.lists import LIST_EXTS, SourceError, is_url as _is_url, read_list, sidecar_caption
from ivdata.manifest import Manifest, utcnow
from ivdata.media.image import IMAGE_EXTS, VIDEO_EXTS, media_kind
from ivdata.net import DeadlineExceeded, NetError, content_length, content_range, open_url, read_chunks
from ivdata.splits import canonical_split
from ivdata.stages.base import Stage, StageStats, failed

MEDIA_EXTS = VIDEO_EXTS | IMAGE_EXTS
# row keys ingest reads itself; every other key of a row is kept in videos.extra
KNOWN = {"path", "url", "uri", "source", "source_id", "label", "split", "start", "end", "caption", "caption_kind",
         "list_file", "list_line"}
DEFAULT_CAPTION_KIND = "web"

__all__ = ["SourceError", "IngestStage", "expand_sources", "video_id_for", "ingest_rows", "read_list"]


class DownloadError(ValueError):
    pass


class _OverLimit(DownloadError):
    """Over max_bytes: the .part is deleted, since no retry can succeed under the same limit."""


def video_id_for(source: str, key: str) -> str:
    return "v" + hashlib.sha1(f"{source}\0{key}".encode()).hexdigest()[:16]


@dataclass
class Sources:
    """Command-line sources as ingest rows, and the files of listed folders that were left out."""
    rows: list[dict]
    not_video: list[str] = field(default_factory=list)   # neither video nor image by extension, nor a sidecar


def expand_sources(sources: Iterable[str], source: str | None = None, media_root: str | Path | None = None
                   ) -> Sources:
    """Turn command-line sources into rows (dicts with the keys the ingest stage accepts). `source` names the
    rows that do not name their own (default: a list layout's name, else "local"); `media_root` is where the
    files named by a list are (ivdata/lists.py)."""
    out = Sources([])
    default = source or "local"
    for s in sources:
        s = str(s)
        p = Path(s)
        if _is_url(s):
            out.rows.append({"url": s, "source": default})
        elif p.is_dir():
            _expand_dir(p, default, out)
        elif p.is_file() and p.suffix.lower() in LIST_EXTS:
            out.rows += read_list(p, source, Path(media_root) if media_root else None)
        elif p.is_file():
            out.rows.append(_file_row(p, default)[0])
        elif any(ch in s for ch in "*?["):
            out.rows += [_file_row(Path(f), default)[0] for f in sorted(glob.glob(s, recursive=True))
                         if Path(f).is_file()]
        else:
            raise SourceError(f"source {s!r}: no such file, directory or URL")
    return out


def _file_row(path: Path, source: str) -> tuple[dict, list[Path]]:
    """A media file's row with its sidecar caption (`<stem>.txt` / `<stem>.json`), if any, and the sidecars."""
    caption, meta, used = sidecar_caption(path)
    row = {"path": str(path), "source": source, **meta}
    if caption is not None:
        row.update(caption=caption, list_file=str(used[-1]))     # the sidecar the caption came from
    return row, used


def _expand_dir(root: Path, source: str, out: Sources) -> None:
    files = [f for f in sorted(root.rglob("*")) if f.is_file()]
    media = {f for f in files if f.suffix.lower() in MEDIA_EXTS and not f.name.startswith(".")}
    sidecars: set[Path] = set()
    for f in sorted(media):
        row, used = _file_row(f, source)
        out.rows.append(row)
        sidecars.update(used)
    out.not_video += [str(f) for f in files if f not in media and f not in sidecars]


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

    @property
    def name_hint(self) -> str:
        """The name whose extension tells the media kind: the URL's path, or the file's."""
        return urllib.parse.urlparse(self.url).path if self.url else self.path


def _span_key(start: float | None, end: float | None) -> str:
    return "whole" if start is None or end is None else f"{round(start * 1000)}-{round(end * 1000)}"


class IngestStage(Stage):
    name = "ingest"
    produces = ("videos", "spans", "source_captions", "captions")   # captions: list captions of clips already made
    batch_size = 4096            # a local file's row takes well under a millisecond: commits would cost more

    def __init__(self, corpus: Corpus, rows: list[dict] | Sources, max_bytes: int = 8 << 30, timeout_s: float = 60.0,
                 max_seconds: float = 3600.0):
        super().__init__(corpus)
        sources = rows if isinstance(rows, Sources) else Sources(list(rows))
        self._rows = sources.rows
        self._not_video = sources.not_video
        self.nrows = len(sources.rows)
        self.max_bytes, self.timeout_s, self.max_seconds = max_bytes, timeout_s, max_seconds
        self._unknown_splits: Counter = Counter()
        self._captions: dict[tuple, dict] = {}
        self._items, self._spans = self._group(sources.rows)

    def _group(self, rows: list[dict]) -> tuple[dict[str, IngestItem], list[dict]]:
        items: dict[str, IngestItem] = {}
        spans = []
        now = utcnow()
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
                                        r.get("label") or None, self._split_name(r.get("split")), extra)
            start, end = _num(r.get("start")), _num(r.get("end"))
            if start is not None and end is not None:
                if end <= start:
                    raise SourceError(f"span end {end} <= start {start} for {uri}")
                spans.append({"video_id": vid, "start_s": start, "end_s": end, "label": r.get("label") or None})
            if r.get("caption") is not None:
                self._add_caption(vid, source, start, end, r, now)
        return items, spans

    def _add_caption(self, vid: str, source: str, start: float | None, end: float | None, r: dict, now) -> None:
        """A list's caption of a media item or a span of it; an empty one is recorded as failed (the row is
        still ingested: its media may be captioned later)."""
        text = str(r["caption"]).strip()
        span = _span_key(start, end)
        kind = str(r.get("caption_kind") or DEFAULT_CAPTION_KIND)
        provenance = {k: r[k] for k in ("list_file", "list_line") if r.get(k) is not None}
        per_row = {k: v for k, v in r.items() if k not in KNOWN and isinstance(v, (str, int, float, bool))}
        self._captions[(vid, span, kind, source)] = {
            "video_id": vid, "span": span, "start_s": start if span != "whole" else None,
            "end_s": end if span != "whole" else None, "kind": kind, "model": source, "text": text or None,
            "error": None if text else "no caption in the list row",
            "extra": json.dumps({**provenance, **per_row}, default=str), "created_at": now}

    def _split_name(self, raw: Any) -> str | None:
        """The canonical split (val for validate/validation, ...); an unknown word is kept as given and
        counted, since dedupe treats it as training."""
        if raw is None or not str(raw).strip():
            return None
        name = canonical_split(raw)
        if name is None:
            name = str(raw).strip()
            self._unknown_splits[name] += 1
        return name

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
        before = stamp(path)
        sha, n = hash_file(path)
        if stamp(path) != before:
            raise DownloadError(f"{path} changed while it was being hashed")
        # size and mtime let later stages notice a file replaced after ingest without hashing it again
        return {"path": path, "sha256": sha, "bytes": n, "mtime_ns": before[1],
                "media": media_kind(path, item.name_hint)}

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        rows = []
        for item, res in done:
            row = {"video_id": item.video_id, "source": item.source, "source_id": item.source_id, "uri": item.uri,
                   "path": item.path, "sha256": None, "bytes": None, "mtime_ns": None,
                   "label": item.label, "split": item.split,
                   "extra": json.dumps(item.extra, default=str) if item.extra else None, "ingested_at": utcnow(),
                   "status": "ingested", "error": None, "failed_stage": None,
                   # a file that could not be had is an image or a video by its name alone
                   "media": "image" if Path(item.name_hint).suffix.lower() in IMAGE_EXTS else "video"}
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
        m.insert_rows("source_captions", list(self._captions.values()))
        attach_source_captions(m)            # to clips of media already split (a list that adds captions)
        stats.skipped = len(self._items) - stats.pending
        stats.extra["spans"] = len(self._spans)
        captions = list(self._captions.values())
        if captions:
            stats.extra["captions"] = sum(c["text"] is not None for c in captions)
            missing = [c for c in captions if c["text"] is None]
            if missing:
                stats.extra["rows_without_caption"] = len(missing)
        if self._not_video:
            stats.extra["not_video_files"] = len(self._not_video)
            stats.extra["not_video_examples"] = [Path(f).name for f in self._not_video[:5]]
        if self._unknown_splits:
            stats.extra["unknown_splits"] = dict(self._unknown_splits)


def ingest_warnings(stats: StageStats) -> list[str]:
    """What a user should read after an ingest: files left out, split names not understood."""
    out = []
    n = stats.extra.get("not_video_files")
    if n:
        names = stats.extra.get("not_video_examples", [])
        out.append(f"skipped {n} file(s) in the given folders that are neither videos nor images (by extension, "
                   "or hidden), nor a media file's caption sidecar: "
                   + ", ".join(names) + (", ..." if n > len(names) else ""))
    missing = stats.extra.get("rows_without_caption")
    if missing:
        out.append(f"{missing} list row(s) have an empty caption: ingested without it, each recorded in "
                   "source_captions with its reason (SELECT * FROM source_captions WHERE text IS NULL)")
    unknown = stats.extra.get("unknown_splits")
    if unknown:
        words = ", ".join(f"{k!r} ({v} videos)" for k, v in sorted(unknown.items()))
        out.append(f"split name(s) {words} are not train/val/test in any known spelling: recorded as given, "
                   "and dedupe treats them as training")
    return out


def download(url: str, dest_dir: Path, video_id: str, max_bytes: int, timeout_s: float, max_seconds: float) -> Path:
    """Resumable download: bytes land in <id>.part (continued with a Range request), renamed when whole.

    Limits: `max_bytes` (a file over it fails and its .part is deleted: it can never succeed under this
    limit) and `max_seconds` for the whole transfer, held during slow reads (the .part of a download cut
    short by time or the network stays, so --retry-failed resumes it). Only http(s), also on redirects.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
    suffix = suffix if suffix in MEDIA_EXTS else ".mp4"     # the kind of a name without one is read from its bytes
    final = dest_dir / f"{video_id}{suffix}"
    if final.exists():
        return final
    part = dest_dir / f"{video_id}{suffix}.part"
    deadline = time.monotonic() + max_seconds
    try:
        if not _transfer(url, part, deadline, max_bytes, timeout_s):
            part.unlink(missing_ok=True)   # the server says the .part is not a prefix of the file: start over
            _transfer(url, part, deadline, max_bytes, timeout_s)
    except DeadlineExceeded:
        raise DownloadError(f"download exceeded the time limit of {max_seconds:g} s") from None
    except _OverLimit:
        part.unlink(missing_ok=True)
        raise
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP {e.code} for {url}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot fetch {url}: {e.reason}") from None
    except (NetError, TimeoutError, ConnectionError) as e:
        raise DownloadError(f"cannot fetch {url}: {e}") from None
    os.replace(part, final)
    return final


def _transfer(url: str, part: Path, deadline: float, max_bytes: int, timeout_s: float) -> bool:
    """Fetch what `part` lacks. False when the .part turns out not to be a prefix of the file (start over)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "ivkit", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        resp = open_url(url, headers=headers, timeout_s=timeout_s, deadline=deadline)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        total = content_range(e.headers)[1]
        e.close()
        # 416 to "bytes=have-": nothing is left after `have`. The .part is the whole file when the server's
        # size says so (a run killed after the last byte, before the rename); otherwise it is stale.
        return total == have
    with resp:
        if have and resp.status == 206 and content_range(resp.headers)[0] != have:
            return False                       # a range other than the one asked for: cannot append
        start = have if resp.status == 206 else 0   # a server that ignores ranges sends everything
        length = content_length(resp.headers)
        if length is not None and start + length > max_bytes:
            raise _OverLimit(f"download larger than the limit: {start + length} > {max_bytes} bytes")
        n = start
        with open(part, "ab" if start else "wb") as f:
            for chunk in read_chunks(resp, timeout_s=timeout_s, deadline=deadline):
                n += len(chunk)
                if n > max_bytes:
                    raise _OverLimit(f"download exceeded the size limit of {max_bytes} bytes")
                f.write(chunk)
    if length is not None and n < start + length:
        raise DownloadError(f"connection closed after {n} of {start + length} bytes "
                            "(the partial file is kept: --retry-failed resumes it)")
    return True


def ingest_rows(corpus: Corpus, rows: list[dict], workers: int = 0, retry_failed: bool = False, **kw) -> StageStats:
    """Python API: register rows with keys path|url, source, source_id, label, split, start, end, caption,
    caption_kind (any other keys go to videos.extra)."""
    from ivdata.stages.base import run_stage
    return run_stage(IngestStage(corpus, rows, **kw), workers=workers, retry_failed=retry_failed)
