"""cut: clip files in a content-addressed clip store (clips/<sha[:2]>/<sha256>.mp4, + .flac audio).

needs: clips (pending spans), videos.path. produces: clips.{path, audio_path, sha256, bytes, actual span,
num_frames, fps, width, height, has_audio}, status 'ok' or 'failed' with the reason.
A clip is made in clips/incoming/ (itself written atomically), then renamed to its content address; the
manifest records it after the rename. A killed run leaves at most files in incoming/, which the rerun clears,
or a complete clip at its address, which the rerun rewrites with the same bytes.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.manifest import Manifest
from ivdata.media.audio import decode_audio, write_flac
from ivdata.media.cut import cut_copy, cut_reencode
from ivdata.media.probe import probe
from ivdata.stages.base import Stage, StageStats, failed

MODES = ("copy", "reencode")


@dataclass
class CutConfig:
    mode: str = "copy"
    short_side: int | None = None
    fps: float | None = None
    crf: int = 23
    preset: str = "veryfast"
    flac: bool = True            # also store 16 kHz mono audio for ASR / audio models
    # libx264 settings as ffmpeg's -x264-params takes them ("key=value:key=value"). "no-mbtree=1" made a
    # re-run give the same bytes (every clip measured did; see ivdata/media/cut.py), at some 25 % more bytes.
    x264_params: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"cut mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.mode == "copy" and (self.short_side or self.fps or self.x264_params):
            raise ValueError("--short-side / --fps / --x264-params need --mode reencode "
                             "(stream copy cannot resize, resample or re-encode)")
        # libx264 only logs a key it does not know and goes on, so at least the form is checked here
        if self.x264_params is not None and not re.fullmatch(r"[a-z0-9-]+=[^:=]+(:[a-z0-9-]+=[^:=]+)*",
                                                              self.x264_params):
            raise ValueError(f"x264 params {self.x264_params!r}: expected key=value pairs joined by ':', "
                             "e.g. no-mbtree=1:keyint=60")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class CutStage(Stage):
    name = "cut"
    needs = ("clips.start_s", "clips.end_s", "videos.path")
    produces = ("clips.path", "clips.audio_path", "clips.num_frames")

    def __init__(self, corpus: Corpus, cfg: CutConfig | None = None):
        super().__init__(corpus)
        self.cfg = cfg or CutConfig()

    @property
    def incoming(self) -> Path:
        """Where clips are made before they move to their content address: one folder, so the orphans of
        a killed run are found without walking the whole store."""
        return self.corpus.clips_dir / "incoming"

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        # One writer per manifest and no worker running yet: anything in incoming/ is a killed run's leftover.
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        status = "('pending', 'failed')" if retry_failed else "('pending')"
        return m.rows("SELECT c.clip_id, c.video_id, c.start_s, c.end_s, v.path AS src FROM clips c "
                      f"JOIN videos v USING (video_id) WHERE c.status IN {status} ORDER BY c.clip_id")

    def work(self, item: dict) -> dict:
        cfg, store = self.cfg, self.corpus.clips_dir
        staged = self.incoming / f"{item['clip_id']}.mp4"
        if cfg.mode == "copy":
            r = cut_copy(item["src"], staged, item["start_s"], item["end_s"])
        else:
            r = cut_reencode(item["src"], staged, item["start_s"], item["end_s"], cfg.short_side, cfg.fps,
                             cfg.crf, cfg.preset, x264_params=cfg.x264_params)
        facts = probe(str(staged))        # record what the file really holds
        sha = sha256_file(staged)
        nbytes = staged.stat().st_size
        final = store / sha[:2] / f"{sha}.mp4"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        audio_path = None
        if cfg.flac and facts.has_audio:
            flac = final.with_suffix(".flac")
            if not flac.exists():
                samples, rate = decode_audio(str(final), 0.0, None, rate=16000, mono=True)
                if samples is not None and samples.size:
                    staged_flac = self.incoming / f"{item['clip_id']}.flac"
                    write_flac(samples, rate, staged_flac)
                    os.replace(staged_flac, flac)
            audio_path = str(flac) if flac.exists() else None
        return {"cut_mode": cfg.mode, "cut_start_s": r.start_s, "cut_end_s": r.end_s, "path": str(final),
                "audio_path": audio_path, "sha256": sha, "bytes": nbytes,
                "duration_s": round(facts.num_frames / facts.fps, 6) if facts.fps else facts.duration_s,
                "num_frames": facts.num_frames, "fps": facts.fps, "width": facts.width, "height": facts.height,
                "has_audio": facts.has_audio}

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        cols = ("cut_mode", "cut_start_s", "cut_end_s", "path", "audio_path", "sha256", "bytes", "duration_s",
                "num_frames", "fps", "width", "height", "has_audio")
        rows = []
        for item, res in done:
            row = {"clip_id": item["clip_id"], **{c: None for c in cols}}
            if failed(res):
                row.update(status="failed", error=res.reason)
                stats.failed += 1
            else:
                row.update(res, status="ok", error=None)
                stats.ok += 1
                stats.media_seconds += res["duration_s"] or 0.0
            rows.append(row)
        m.update_rows("clips", "clip_id", rows)
