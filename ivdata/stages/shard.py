"""shard: a named subset -> WebDataset tars (mp4 + json [+ flac] [+ caption txt]) and a wids index.

needs: clips with status 'ok', captions, scores, subsets. produces: shards, samples, the tar files,
<shardset>.wids.json and <shardset>.txt.

A shard set holds exactly its subset (the `shard_sets` table says which). Clips the subset gained go into
new shards numbered after the last recorded one; recorded shards are never written again. A recorded shard
that holds a clip the subset has lost (a narrowed selection, a dedupe or leakage run that dropped it) is
stale: its clips that are still wanted are written again into new shards, then the wids index is rewritten
without the stale shards (readers switch in one rename), their rows are dropped, and last their files.

Resume: at start, shard files of the set that the manifest does not record (left by a killed run) are
deleted. A recorded sample is not written again unless its shard is stale; a stale shard stays stale until
it is dropped (a sample moved out of it leaves it with fewer sample rows than it holds), so a run killed at
any point is finished by the next. Each shard is written under a temporary name, renamed when whole, and
recorded with its samples in one transaction.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.fsutil import atomic_write_text
from ivdata.manifest import Manifest, utcnow
from ivdata.shards.tar import KEY, WrittenShard, write_tar
from ivdata.stages.base import Stage, StageStats, failed

JSON_FIELDS = ("clip_id", "video_id", "source", "source_id", "duration_s", "fps", "num_frames", "width", "height",
               "has_audio")


@dataclass
class ShardConfig:
    subset: str = "all"
    shardset: str | None = None        # default: the subset name
    maxcount: int = 1000
    maxsize: int = 1 << 30             # bytes per shard (mp4 + flac + json)
    flac: bool = True
    include_labels: bool = False       # labels are metadata; training shards omit them by default
    txt_kinds: tuple[str, ...] = ()    # e.g. ("AVS", "V") -> K.avs.txt, K.v.txt

    def __post_init__(self):
        if not KEY.match(self.name):
            raise ValueError(f"shard set name {self.name!r}: use letters, digits, '_' and '-'")
        if self.maxcount < 1 or self.maxsize < 1:
            raise ValueError("--maxcount and --maxsize must be at least 1")

    @property
    def name(self) -> str:
        return self.shardset or self.subset


def sample_json(row: dict, captions: dict, scores: dict, include_labels: bool) -> dict:
    d = {k: row[k] for k in JSON_FIELDS}
    # start_s/end_s: the span the mp4 holds, in seconds of its source (a stream copy starts at the keyframe
    # at or before the span asked for and ends at the first one after it); requested_*: the span asked for
    held = row.get("cut_start_s") is not None
    d["start_s"] = row["cut_start_s"] if held else row["start_s"]
    d["end_s"] = row["cut_end_s"] if held else row["end_s"]
    d["requested_start_s"], d["requested_end_s"] = row["start_s"], row["end_s"]
    d["captions"], d["scores"] = captions, scores
    if include_labels:
        d["label"], d["split"] = row.get("label"), row.get("split")
    return d


class ShardStage(Stage):
    name = "shard"
    needs = ("clips.path", "captions", "scores", "subsets")
    produces = ("shards", "samples", "tar files", "wids index")

    def __init__(self, corpus: Corpus, cfg: ShardConfig | None = None):
        super().__init__(corpus)
        self.cfg = cfg or ShardConfig()
        self._stale: list[int] = []        # shard indexes of this set that finish() drops

    @property
    def dir(self) -> Path:
        return self.corpus.shard_dir(self.cfg.name)

    def shard_file(self, index: int) -> str:
        return f"{self.cfg.name}/{self.cfg.name}-{index:06d}.tar"

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        cfg = self.cfg
        wanted = m.subset_clip_ids(cfg.subset)         # an unknown subset fails here, before any file is touched
        m.execute("INSERT OR REPLACE INTO shard_sets VALUES (?, ?, ?)", [cfg.name, cfg.subset, utcnow()])
        recorded = {r[0] for r in m.execute("SELECT path FROM shards WHERE shardset = ?", [cfg.name]).fetchall()}
        self.dir.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"^{re.escape(cfg.name)}-\d{{6,}}\.tar$")
        for f in self.dir.iterdir():   # orphans of a killed run: unrecorded shards and temp files
            if (pattern.match(f.name) and f"{cfg.name}/{f.name}" not in recorded) or (f.name.startswith(".") and ".tmp" in f.name):
                f.unlink()
        placed = dict(m.execute("SELECT key, shard_index FROM samples WHERE shardset = ?", [cfg.name]).fetchall())
        self._stale = stale_shards(m, cfg.name, set(wanted), placed)
        stale = set(self._stale)
        todo = [c for c in wanted if c not in placed or placed[c] in stale]
        if not todo:
            return []
        rows = {r["clip_id"]: r for r in m.rows(
            "SELECT ci.* FROM clip_info ci WHERE ci.clip_id IN (SELECT unnest(?::VARCHAR[]))", [todo])}
        captions: dict[str, dict] = {}
        for cid, kind, text in m.execute(
                "SELECT clip_id, kind, text FROM captions WHERE clip_id IN (SELECT unnest(?::VARCHAR[])) "
                "AND text IS NOT NULL AND text <> '' ORDER BY created_at", [todo]).fetchall():
            captions.setdefault(cid, {})[kind] = text       # newest caption of a kind wins
        scores: dict[str, dict] = {}
        for cid, metric, value in m.execute(
                "SELECT clip_id, metric, value FROM scores WHERE clip_id IN (SELECT unnest(?::VARCHAR[])) "
                "ORDER BY metric, model", [todo]).fetchall():
            scores.setdefault(cid, {})[metric] = value
        # coalesce in SQL: `max(...) or -1` in Python read a recorded shard 0 as "none", and a run killed
        # after its first shard restarted at index 0 and failed on the primary key
        start = m.scalar("SELECT coalesce(max(shard_index), -1) + 1 FROM shards WHERE shardset = ?", [cfg.name])
        plans, cur, size = [], [], 0
        for cid in todo:
            r = rows[cid]
            js = json.dumps(sample_json(r, captions.get(cid, {}), scores.get(cid, {}), cfg.include_labels),
                            sort_keys=True, default=str).encode()
            flac = r["audio_path"] if (cfg.flac and r["audio_path"]) else None
            est = (r["bytes"] or 0) + len(js) + (os.path.getsize(flac) if flac and os.path.exists(flac) else 0)
            if cur and (len(cur) >= cfg.maxcount or size + est > cfg.maxsize):
                plans.append(cur)
                cur, size = [], 0
            texts = {k.lower(): captions.get(cid, {}).get(k) for k in cfg.txt_kinds}
            cur.append({"key": cid, "mp4": r["path"], "json": js, "flac": flac,
                        "txt": {k: v for k, v in texts.items() if v}})
            size += est
        if cur:
            plans.append(cur)
        return [{"index": start + i, "samples": p} for i, p in enumerate(plans)]

    def work(self, plan: dict) -> WrittenShard:
        samples = []
        for s in plan["samples"]:
            members: list = [("mp4", Path(s["mp4"])), ("json", s["json"])]
            if s["flac"]:
                members.append(("flac", Path(s["flac"])))
            members += [(f"{k}.txt", v.encode()) for k, v in sorted(s["txt"].items())]
            samples.append((s["key"], members))
        return write_tar(self.corpus.shards_dir / self.shard_file(plan["index"]), samples)

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        for plan, res in done:
            if failed(res):
                stats.failed += 1
                raise RuntimeError(f"shard {self.shard_file(plan['index'])} failed: {res.reason}")
            m.insert_rows("shards", [{
                "shardset": self.cfg.name, "shard_index": plan["index"], "path": self.shard_file(plan["index"]),
                "sha256": res.sha256, "md5": res.md5, "nsamples": len(res.samples), "bytes": res.bytes,
                "created_at": utcnow()}], mode="INSERT")
            # OR REPLACE: a sample moved out of a stale shard now points at its new one
            m.insert_rows("samples", [{"shardset": self.cfg.name, "key": s.key, "shard_index": plan["index"],
                                       "members": s.members, "sha256": s.sha256} for s in res.samples],
                          mode="INSERT OR REPLACE")
            stats.ok += 1
            stats.extra["samples"] = stats.extra.get("samples", 0) + len(res.samples)

    def finish(self, m: Manifest, stats: StageStats) -> None:
        name, stale = self.cfg.name, self._stale
        write_indexes(m, self.corpus, name, leave_out=stale)      # readers move to the new shards here
        if not stale:
            return
        paths = [r[0] for r in m.execute("SELECT path FROM shards WHERE shardset = ? AND shard_index IN "
                                         "(SELECT unnest(?::INTEGER[]))", [name, stale]).fetchall()]
        m.execute("BEGIN TRANSACTION")
        try:
            for table in ("samples", "shards"):
                m.execute(f"DELETE FROM {table} WHERE shardset = ? AND shard_index IN (SELECT unnest(?::INTEGER[]))",
                          [name, stale])
            m.execute("COMMIT")
        except Exception:
            m.execute("ROLLBACK")
            raise
        for p in paths:         # a kill before this leaves unrecorded files, which the next run deletes
            (self.corpus.shards_dir / p).unlink(missing_ok=True)
        stats.extra["dropped_shards"] = len(stale)


def stale_shards(m: Manifest, shardset: str, wanted: set[str], placed: dict[str, int]) -> list[int]:
    """Recorded shards of the set that must go: one holding a sample the subset no longer has, or one with fewer
    sample rows than samples (some moved to newer shards by a rewrite that was killed before it dropped it)."""
    rows_per_shard: dict[int, int] = {}
    for index in placed.values():
        rows_per_shard[index] = rows_per_shard.get(index, 0) + 1
    lost = {index for key, index in placed.items() if key not in wanted}
    return sorted(lost | {index for index, n in m.execute(
        "SELECT shard_index, nsamples FROM shards WHERE shardset = ?", [shardset]).fetchall()
        if rows_per_shard.get(index, 0) < n})


def write_indexes(m: Manifest, corpus: Corpus, shardset: str, leave_out: list[int] = ()) -> Path:
    """<shardset>.wids.json (urls relative to the index) and <shardset>.txt (absolute paths) of the recorded
    shards, less `leave_out` (shard indexes about to be dropped)."""
    dropped = set(leave_out)
    rows = [r for r in m.rows("SELECT shard_index, path, nsamples, bytes, md5 FROM shards WHERE shardset = ? "
                              "ORDER BY shard_index", [shardset]) if r["shard_index"] not in dropped]
    d = corpus.shard_dir(shardset)
    d.mkdir(parents=True, exist_ok=True)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": shardset,
             "shardlist": [{"url": Path(r["path"]).name, "nsamples": r["nsamples"], "filesize": r["bytes"],
                            "md5sum": r["md5"]} for r in rows]}
    atomic_write_text(d / f"{shardset}.wids.json", json.dumps(index, indent=1))
    atomic_write_text(d / f"{shardset}.txt", "".join(f"{corpus.shards_dir / r['path']}\n" for r in rows))
    return d / f"{shardset}.wids.json"
