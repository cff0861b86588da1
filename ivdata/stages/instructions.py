"""import-instructions: LLaVA / VideoChat2-IT files -> the `conversations` table, linked to their media.

needs: the file and the folder its media paths are relative to. produces: conversations (one row per entry:
ok, or failed with the reason: malformed, media file missing, media of the other kind), videos rows for media
files the manifest did not know (registered by the ingest stage under the dataset's name: probe / images /
split / cut then make their clips), spans for entries about a span of a video, and the link of each
conversation to its clip once that exists (ivdata/links.py).

A media path is matched to what the manifest already holds first: a clip file of the clip store (the
conversation is about that clip), or a registered video or image (by its path). For a video the import
records the span the entry is about (the whole video: 0 to infinity) in `spans`, so `split --method spans`
makes the clips every conversation needs. Import runs in two resumable
stages, ingest for unknown media and then this one, each committing in batches: a killed import, run again,
records what is missing and nothing twice (conversation ids are stable, ivdata/instructions.py).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.instructions import Entry, read_entries
from ivdata.links import link_conversations
from ivdata.manifest import Manifest, utcnow
from ivdata.stages.base import Stage, StageStats, failed, run_stage
from ivdata.stages.ingest import IngestStage


class InstructionStage(Stage):
    name = "import_instructions"
    needs = ("clips.path", "videos.path")
    produces = ("conversations", "spans")

    def __init__(self, corpus: Corpus, entries: list[Entry], source_file: str, fmt: str, dataset: str,
                 media_root: Path, files: dict[str, str]):
        """files: each media path the entries name -> the file it resolves to under media_root."""
        super().__init__(corpus)
        self.source_file, self.format, self.dataset, self.media_root = source_file, fmt, dataset, str(media_root)
        self._entries, self._files = entries, files
        self.nentries = len(entries)

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        done = {r[0]: r[1] for r in m.execute(
            "SELECT conversation_id, status FROM conversations WHERE dataset = ?", [self.dataset]).fetchall()}
        return [{**vars(e), "file": self._files.get(e.media_path)} for e in self._entries
                if e.conversation_id not in done or (retry_failed and done[e.conversation_id] == "failed")]

    def work(self, entry: dict) -> dict:
        """Where its media file is, or why the entry cannot be imported."""
        if entry["error"]:
            return {"error": entry["error"], "path": None}
        if not os.path.isfile(entry["file"]):
            return {"error": f"media file not found: {entry['media_path']} (under {self.media_root})", "path": None}
        return {"error": None, "path": entry["file"]}

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        paths = sorted({res["path"] for _, res in done if not failed(res) and res["path"]})
        clips = {r[0]: (r[1], r[2], r[3]) for r in m.execute(
            "SELECT path, clip_id, video_id, media FROM clips WHERE path IN (SELECT unnest(?::VARCHAR[]))",
            [paths]).fetchall()}
        media = {r[0]: r[1:] for r in m.execute(
            "SELECT path, video_id, media, status, error FROM videos WHERE path IN (SELECT unnest(?::VARCHAR[]))",
            [paths]).fetchall()}
        rows, spans, now = [], [], utcnow()
        for entry, res in done:
            error = res.reason if failed(res) else res["error"]
            clip_id = video_id = None
            if error is None:
                clip_id, video_id, kind = clips.get(res["path"]) or (None, None, None)
                status, why = "ok", None
                if clip_id is None:
                    video_id, kind, status, why = media.get(res["path"], (None, None, None, None))
                if video_id is None:
                    error = f"media file {entry['media_path']} is not in the manifest (its ingest did not record it)"
                elif status == "failed":
                    error = f"media file {entry['media_path']} failed: {why}"
                elif kind != entry["media"]:
                    error = f"names {entry['media']} {entry['media_path']}, which is a {kind} file"
            if error is None and clip_id is None and entry["media"] == "video":
                # `split --method spans` makes the clip: of the span, or of the whole video (an end past the
                # video's is cut at its duration)
                spans.append({"video_id": video_id, "start_s": entry["start_s"] or 0.0,
                              "end_s": entry["end_s"] if entry["start_s"] is not None else math.inf, "label": None})
            rows.append({"conversation_id": entry["conversation_id"], "dataset": self.dataset, "task": entry["task"],
                         "format": self.format, "source_file": self.source_file, "entry_index": entry["entry_index"],
                         "entry_id": entry["entry_id"], "media": entry["media"], "media_path": entry["media_path"],
                         "video_id": video_id, "start_s": entry["start_s"], "end_s": entry["end_s"],
                         "clip_id": clip_id if error is None else None,
                         "turns": json.dumps(entry["turns"], ensure_ascii=False) if entry["turns"] else None,
                         "nturns": len(entry["turns"]) if entry["turns"] else None,
                         "status": "failed" if error else "ok", "error": error, "imported_at": now})
            stats.failed += error is not None
            stats.ok += error is None
        m.insert_rows("conversations", rows)
        m.insert_rows("spans", spans, mode="INSERT OR IGNORE")

    def finish(self, m: Manifest, stats: StageStats) -> None:
        stats.extra["linked"] = link_conversations(m)
        stats.extra["waiting_for_clips"] = m.scalar(
            "SELECT count(*) FROM conversations WHERE dataset = ? AND status = 'ok' AND clip_id IS NULL", [self.dataset])


def media_file(root: Path, rel: str) -> Path:
    p = Path(rel)
    return (p if p.is_absolute() else root / p).resolve()


def import_instructions(corpus: Corpus, path: str | Path, fmt: str, media_root: str | Path,
                        dataset: str | None = None, task: str | None = None, source: str | None = None,
                        workers: int = 0, retry_failed: bool = False) -> tuple[StageStats | None, StageStats]:
    """Parse the file, register the media files the manifest lacks, then import the conversations.
    Returns (the ingest stage's stats or None, the import's stats)."""
    path, root = Path(path).resolve(), Path(media_root).resolve()
    dataset = dataset or path.stem
    entries = read_entries(path, fmt, dataset, task)
    resolved = {rel: str(media_file(root, rel)) for rel in {e.media_path for e in entries if e.error is None}}
    files = sorted(set(resolved.values()))
    with corpus.manifest(read_only=True) as m:
        known = {r[0] for r in m.execute(
            "SELECT path FROM clips WHERE path IN (SELECT unnest(?::VARCHAR[])) UNION "
            "SELECT path FROM videos WHERE path IN (SELECT unnest(?::VARCHAR[]))", [files, files]).fetchall()}
    new = [{"path": f, "source": source or dataset} for f in files if f not in known and Path(f).is_file()]
    ingested = run_stage(IngestStage(corpus, new), workers, retry_failed) if new else None
    stage = InstructionStage(corpus, entries, str(path), fmt, dataset, root, resolved)
    return ingested, run_stage(stage, workers, retry_failed, batch_size=2048)
