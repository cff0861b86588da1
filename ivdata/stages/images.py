"""images: decode, size, optionally shrink and re-encode each ingested image, into the clip store.

needs: videos with media 'image' (path, sha256 from ingest). produces: the image file in the content-addressed
clip store (clips/<sha[:2]>/<sha>.jpg|png|webp), the image's facts on its videos row (status 'probed'; width,
height and frame count of the source, container = its format), a `splits` row (method 'image', so split leaves
it alone) and its one `clips` row: clip_id = video_id, media 'image', span 0-0, one frame, the stored file's
size and hash, cut_mode 'image' and the settings in cut_options. An image that does not decode completely
(unreadable, truncated, empty) or no longer matches ingest's hash is recorded as failed with the reason.

Storage mirrors the cut stage: a file is noted in a journal (clips/incoming-images/<id>.placed) before its
rename into the store, and the journal is dropped once the row has committed; a rerun deletes journaled
store files that no clip names, so a killed run leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.fsutil import atomic_write_text
from ivdata.links import refresh_links
from ivdata.manifest import Manifest
from ivdata.media.image import FORMATS, prepare_image
from ivdata.media.probe import MediaError
from ivdata.stages.base import Stage, StageStats, failed


@dataclass
class ImageConfig:
    short_side: int | None = None      # shrink so the short side is at most this (never enlarged)
    format: str = "jpg"                # jpg | webp | png | keep (JPEG, PNG, WebP as they are; others JPEG)
    quality: int = 90                  # JPEG / WebP quality of images written again

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"--format {self.format!r}: one of {', '.join(FORMATS)}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError("--short-side must be at least 1")
        if not 1 <= self.quality <= 100:
            raise ValueError("--quality is 1..100")

    def options(self) -> dict:
        return {"mode": "image", "short_side": self.short_side, "format": self.format, "quality": self.quality}


class ImageStage(Stage):
    name = "images"
    needs = ("videos.path", "videos.sha256", "videos.media")
    # + the image files; captions and conversations.clip_id: links to the new clips
    produces = tuple(f"videos.{c}" for c in ("status", "error", "failed_stage", "container", "width", "height",
                                             "num_frames", "duration_s", "has_video", "has_audio")) + (
        "splits", "clips", "captions", "conversations.clip_id")

    def __init__(self, corpus: Corpus, cfg: ImageConfig | None = None):
        super().__init__(corpus)
        self.cfg = cfg or ImageConfig()

    @property
    def incoming(self) -> Path:
        return self.corpus.clips_dir / "incoming-images"

    def cleanup(self, m: Manifest) -> None:
        self._remove_orphans(m)
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        retry = " OR (status = 'failed' AND failed_stage = 'images')" if retry_failed else ""
        return m.rows("SELECT video_id, path, sha256 FROM videos WHERE media = 'image' "
                      f"AND (status = 'ingested'{retry}) ORDER BY video_id")

    def _remove_orphans(self, m: Manifest) -> None:
        """Store files a killed run placed that no clip row names."""
        placed = set()
        for journal in self.incoming.glob("*.placed") if self.incoming.is_dir() else ():
            placed.update(line for line in journal.read_text().splitlines() if line)
        store = self.corpus.clips_dir.resolve()
        placed = {p for p in placed if Path(p).parent.parent.resolve() == store}
        if placed:
            used = {r[0] for r in m.execute("SELECT path FROM clips WHERE path IN (SELECT unnest(?::VARCHAR[]))",
                                            [sorted(placed)]).fetchall()}
            for p in placed - used:
                Path(p).unlink(missing_ok=True)

    def work(self, item: dict) -> dict:
        cfg = self.cfg
        try:
            data = Path(item["path"]).read_bytes()
        except OSError as e:
            raise MediaError(f"unreadable: {e.strerror or e}") from None
        if item["sha256"] and hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise MediaError("source changed since ingest (sha256 differs): not stored; restore the file and "
                             "rerun with --retry-failed, or ingest the new file as a new image")
        img = prepare_image(data, cfg.short_side, cfg.format, cfg.quality)
        sha = hashlib.sha256(img.data).hexdigest() if img.rewritten else item["sha256"]
        final = self.corpus.clips_dir / sha[:2] / f"{sha}.{img.ext}"
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.incoming / f"{item['video_id']}.placed", str(final))
            staged = self.incoming / f"{item['video_id']}.{img.ext}"
            staged.write_bytes(img.data)
            os.replace(staged, final)
        return {"path": str(final), "sha256": sha, "bytes": len(img.data), "width": img.width, "height": img.height,
                "source_format": img.source_format.lower(), "source_width": img.source_width,
                "source_height": img.source_height, "frames": img.frames, "rewritten": img.rewritten}

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        videos, splits, clips = [], [], []
        options = json.dumps(self.cfg.options(), sort_keys=True)
        for item, res in done:
            vid = item["video_id"]
            if failed(res):
                videos.append({"video_id": vid, "status": "failed", "error": res.reason, "failed_stage": "images"})
                stats.failed += 1
                continue
            videos.append({"video_id": vid, "status": "probed", "error": None, "failed_stage": None,
                           "container": res["source_format"], "width": res["source_width"],
                           "height": res["source_height"], "num_frames": res["frames"], "duration_s": 0.0,
                           "has_video": False, "has_audio": False})
            splits.append({"video_id": vid, "method": "image", "nshots": 1, "nclips": 1, "status": "ok",
                           "error": None})
            clips.append({"clip_id": vid, "video_id": vid, "start_s": 0.0, "end_s": 0.0, "split_method": "image",
                          "cut_mode": "image", "cut_start_s": 0.0, "cut_end_s": 0.0, "path": res["path"],
                          "audio_path": None, "sha256": res["sha256"], "bytes": res["bytes"], "duration_s": 0.0,
                          "num_frames": 1, "fps": None, "width": res["width"], "height": res["height"],
                          "has_audio": False, "status": "ok", "error": None, "cut_options": options,
                          "media": "image"})
            stats.ok += 1
            stats.extra["rewritten"] = stats.extra.get("rewritten", 0) + bool(res["rewritten"])
        m.update_rows("videos", "video_id", [v for v in videos if v["status"] == "failed"])
        m.update_rows("videos", "video_id", [v for v in videos if v["status"] == "probed"])
        m.insert_rows("splits", splits)
        m.insert_rows("clips", clips)

    def committed(self, batch: list) -> None:
        for item, _ in batch:
            (self.incoming / f"{item['video_id']}.placed").unlink(missing_ok=True)

    def finish(self, m: Manifest, stats: StageStats) -> None:
        stats.extra.update(refresh_links(m))
