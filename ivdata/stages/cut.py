"""cut: clip files in a content-addressed clip store (clips/<sha[:2]>/<sha256>.mp4, + .flac audio).

needs: clips (pending spans), videos.path (+ bytes, mtime_ns, sha256 from ingest). produces:
clips.{path, audio_path, sha256, bytes, actual span, num_frames, fps, width, height, has_audio,
cut_options}, status 'ok' or 'failed' with the reason.

Checks, each a recorded failure of the clip, never a clip of the wrong content:
- the source must still be the file ingest hashed: same size, and same mtime or else same sha256
  (a replaced file fails with "source changed since ingest"; restore it and rerun with --retry-failed,
  or ingest the new file as a new video);
- the clip must hold what was asked for: a written clip more than `max(2 frames, 1 - min_coverage of
  the span)` short of the requested span (a source whose frames stop decoding early) fails with both
  counts in the reason. A clip within that tolerance is kept; its cut_start_s/cut_end_s, num_frames and
  duration_s say what it holds.
A run with other cut settings than the clips already cut is refused before any work (mixing settings in
one corpus is rarely meant); `allow_mixed` (`--allow-mixed-options`) cuts the rest with the new ones.

A clip is made in clips/incoming/ (itself written atomically), then renamed to its content address; the
manifest records it after the rename. Before each rename into the store a worker notes the address in a
journal (incoming/<clip_id>.placed), dropped once the clip's row has committed. A killed run leaves at
most files in incoming/ and store files named by journals: the rerun deletes those no clip row refers to
(a re-encode may give other bytes, hence another address), then clears incoming/.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.fsutil import atomic_write_text, changed_since, hash_file, stamp
from ivdata.manifest import Manifest
from ivdata.media.audio import write_flac
from ivdata.media.cut import ClipSource
from ivdata.media.probe import MediaError
from ivdata.runtime.executor import failure_reason
from ivdata.stages.base import Stage, StageConfigError, StageStats, failed

MODES = ("copy", "reencode")
# Stream-copied clips cost less than opening their source, so a worker gets up to this many clips of one
# source at a time (one open); a long video's many clips still spread over the workers. A re-encode costs
# far more than the open: re-encoded clips go one per item.
COPY_CLIPS_PER_ITEM = 16
STORE_NAME = re.compile(r"[0-9a-f]{64}\.(mp4|flac)")
# what a cut records of each clip
CLIP_COLUMNS = ("cut_mode", "cut_start_s", "cut_end_s", "path", "audio_path", "sha256", "bytes", "duration_s",
                "num_frames", "fps", "width", "height", "has_audio", "cut_options")


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
    # A clip holding less than this share of its requested span (and more than 2 frames short) fails.
    min_coverage: float = 0.95

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
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"min_coverage {self.min_coverage}: a share of the span in (0, 1]")

    def options(self) -> dict:
        """The settings that shape a clip's bytes (what clips.cut_options records): stream copy has none
        beyond its mode."""
        out: dict = {"mode": self.mode}
        if self.mode == "reencode":
            out.update(short_side=self.short_side, fps=self.fps, crf=self.crf, preset=self.preset,
                       x264_params=self.x264_params)
        out["flac"] = self.flac
        return out


class SourceChanged(MediaError):
    pass


def shortfall(asked_s: float, frames: int, fps: float | None, min_coverage: float) -> str | None:
    """Why a clip of `frames` frames at `fps` falls short of a requested span of `asked_s` seconds, or None
    when it is within tolerance (2 frames of rounding, or 1 - min_coverage of the span)."""
    if not fps or asked_s <= 0:
        return None
    missing = asked_s * fps - frames
    if missing <= max(2.0, (1 - min_coverage) * asked_s * fps):
        return None
    return (f"clip holds {frames} frames ({frames / fps:.2f} s) of the {asked_s * fps:.0f} frames "
            f"({asked_s:.2f} s) asked for: the source's frames stop early (damaged, or shorter than probed)")


def _differences(recorded: dict, asked: dict) -> list[str]:
    return [f"{k}={recorded[k]!r} (now {asked.get(k)!r})" for k in sorted(recorded)
            if k in asked and recorded[k] != asked[k]]


class CutStage(Stage):
    name = "cut"
    needs = ("clips.start_s", "clips.end_s", "videos.path", "videos.sha256", "videos.bytes", "videos.mtime_ns")
    produces = tuple(f"clips.{c}" for c in CLIP_COLUMNS + ("status", "error"))   # + the clip files

    def __init__(self, corpus: Corpus, cfg: CutConfig | None = None, allow_mixed: bool = False):
        super().__init__(corpus)
        self.cfg = cfg or CutConfig()
        self.allow_mixed = allow_mixed

    @property
    def incoming(self) -> Path:
        """Where clips are made before they move to their content address: one folder, so the orphans of
        a killed run are found without walking the whole store."""
        return self.corpus.clips_dir / "incoming"

    def _todo_filter(self, retry_failed: bool) -> str:
        return "('pending', 'failed')" if retry_failed else "('pending')"

    def check(self, m: Manifest, retry_failed: bool) -> None:
        """Refuse to cut with other settings than the clips already cut (unless allow_mixed)."""
        if self.allow_mixed or not m.scalar(
                f"SELECT count(*) FROM clips WHERE status IN {self._todo_filter(retry_failed)}"):
            return
        asked = self.cfg.options()
        recorded = []       # of video clips: an image's clip row carries the images stage's settings
        for opts, mode, n in m.execute(
                "SELECT cut_options, cut_mode, count(*) FROM clips WHERE status = 'ok' AND media = 'video' "
                "GROUP BY ALL").fetchall():
            rec = json.loads(opts) if opts else {"mode": mode}   # clips cut before options were recorded
            if not _differences(rec, asked):
                return                                           # these settings are already in use
            recorded.append((n, rec))
        if recorded:
            n, rec = max(recorded, key=lambda x: x[0])
            raise StageConfigError(
                f"{n} clips are already cut with other settings: {', '.join(_differences(rec, asked))}. "
                "Cut with the recorded settings, or pass --allow-mixed-options to cut the remaining clips "
                "with these")

    def cleanup(self, m: Manifest) -> None:
        # One writer per manifest and no worker running yet: anything in incoming/ is a killed run's leftover.
        self._remove_orphans(m)
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        rows = m.rows("SELECT c.clip_id, c.video_id, c.start_s, c.end_s, v.path AS src, v.bytes AS src_bytes, "
                      "v.mtime_ns AS src_mtime_ns, v.sha256 AS src_sha256 FROM clips c "
                      f"JOIN videos v USING (video_id) WHERE c.status IN {self._todo_filter(retry_failed)} "
                      "ORDER BY c.clip_id")
        return by_source(rows, COPY_CLIPS_PER_ITEM if self.cfg.mode == "copy" else 1)

    def _remove_orphans(self, m: Manifest) -> None:
        """Store files a killed run placed whose clips were never recorded (journals in incoming/)."""
        placed: set[str] = set()
        for journal in self.incoming.glob("*.placed") if self.incoming.is_dir() else ():
            placed.update(line for line in journal.read_text().splitlines() if line)
        store = self.corpus.clips_dir.resolve()
        # only files shaped like content addresses inside this store: a journal can never name anything else
        placed = {p for p in placed
                  if STORE_NAME.fullmatch(Path(p).name) and Path(p).parent.parent.resolve() == store}
        if not placed:
            return
        names = sorted(placed)
        used = {r[0] for r in m.execute(
            "SELECT path FROM clips WHERE path IN (SELECT unnest(?::VARCHAR[])) UNION ALL "
            "SELECT audio_path FROM clips WHERE audio_path IN (SELECT unnest(?::VARCHAR[]))", [names, names]).fetchall()}
        for p in placed - used:
            Path(p).unlink(missing_ok=True)

    def _journal(self, clip_id: str) -> Path:
        return self.incoming / f"{clip_id}.placed"

    def work(self, item: dict) -> list[dict]:
        """Cut the clips of one item (clips of one source) from one open of the source. A fault of the source
        (changed since ingest, does not open) fails the item, i.e. each of its clips; a fault of one clip
        fails that clip: {"clip_id", "error"} in its place."""
        src = item["src"]
        why = changed_since(src, item["src_bytes"], item["src_mtime_ns"], item["src_sha256"])
        if why:
            raise SourceChanged(f"source changed since ingest ({why}): not cut; restore the file and rerun "
                                "with --retry-failed, or ingest the new file as a new video")
        before = stamp(src)
        out = []
        with ClipSource(src) as source:
            for clip in item["clips"]:
                try:
                    out.append(self._cut(source, clip, before))
                except Exception as e:
                    out.append({"clip_id": clip["clip_id"], "error": failure_reason(e)})
        return out

    def _cut(self, source: ClipSource, clip: dict, before) -> dict:
        cfg, store = self.cfg, self.corpus.clips_dir
        staged = self.incoming / f"{clip['clip_id']}.mp4"
        try:
            if cfg.mode == "copy":
                r = source.copy(staged, clip["start_s"], clip["end_s"])
            else:
                r = source.reencode(staged, clip["start_s"], clip["end_s"], cfg.short_side, cfg.fps, cfg.crf,
                                    cfg.preset, x264_params=cfg.x264_params)
            if stamp(source.src) != before:
                raise SourceChanged("source changed while it was being cut: not cut")
            # r is what was written (frames muxed, their span, size, rate, audio): the file's facts
            short = shortfall(clip["end_s"] - clip["start_s"], r.num_frames, r.fps, cfg.min_coverage)
            if short:
                raise MediaError(short)
            sha, nbytes = hash_file(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        final = store / sha[:2] / f"{sha}.mp4"
        final.parent.mkdir(parents=True, exist_ok=True)
        placed = [str(final)]
        atomic_write_text(self._journal(clip["clip_id"]), "\n".join(placed))
        os.replace(staged, final)
        audio_path = None
        if cfg.flac and r.has_audio:
            flac = final.with_suffix(".flac")
            if not flac.exists():
                samples, rate = source.audio(r.start_s, r.end_s, rate=16000, mono=True)
                if samples is not None and samples.size:
                    staged_flac = self.incoming / f"{clip['clip_id']}.flac"
                    write_flac(samples, rate, staged_flac)
                    placed.append(str(flac))
                    atomic_write_text(self._journal(clip["clip_id"]), "\n".join(placed))
                    os.replace(staged_flac, flac)
            audio_path = str(flac) if flac.exists() else None
        return {"clip_id": clip["clip_id"], "cut_mode": cfg.mode, "cut_start_s": r.start_s, "cut_end_s": r.end_s,
                "path": str(final), "audio_path": audio_path, "sha256": sha, "bytes": nbytes,
                "duration_s": round(r.duration_s, 6), "num_frames": r.num_frames, "fps": r.fps, "width": r.width,
                "height": r.height, "has_audio": r.has_audio, "cut_options": json.dumps(cfg.options(), sort_keys=True)}

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        cols = CLIP_COLUMNS
        rows = []
        for item, res in done:
            for out in _outcomes(item, res):
                row = {"clip_id": out["clip_id"], **{c: None for c in cols}}
                if "error" in out:
                    row.update(status="failed", error=out["error"])
                    stats.failed += 1
                else:
                    row.update({c: out[c] for c in cols}, status="ok", error=None)
                    stats.ok += 1
                    stats.media_seconds += out["duration_s"] or 0.0
                rows.append(row)
        m.update_rows("clips", "clip_id", rows)

    def committed(self, batch: list) -> None:
        # a clip recorded ok names its files now: nothing left to clean up. A failed clip keeps its journal:
        # what it placed before failing (its mp4, when the audio failed) is removed by the next run unless a
        # row names it.
        for item, res in batch:
            for out in _outcomes(item, res):
                if "error" not in out:
                    self._journal(out["clip_id"]).unlink(missing_ok=True)


def _outcomes(item: dict, res) -> list[dict]:
    """Per-clip outcomes of an item; a failed item fails each of its clips with its reason."""
    if failed(res):
        return [{"clip_id": c["clip_id"], "error": res.reason} for c in item["clips"]]
    return res


def by_source(rows: list[dict], most: int) -> list[dict]:
    """Clip rows (ordered by clip_id, so a video's clips are adjacent) -> items of at most `most` clips of one
    source each."""
    items: list[dict] = []
    for r in rows:
        if not items or items[-1]["video_id"] != r["video_id"] or len(items[-1]["clips"]) >= most:
            items.append({k: r[k] for k in ("video_id", "src", "src_bytes", "src_mtime_ns", "src_sha256")} | {"clips": []})
        items[-1]["clips"].append({k: r[k] for k in ("clip_id", "start_s", "end_s")})
    return items
