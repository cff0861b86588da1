"""shard: a named subset -> WebDataset tars (mp4 + json [+ flac] [+ caption txt]) and a wids index.

needs: clips with status 'ok', captions, scores, subsets. produces: shards, samples, the tar files,
<shardset>.wids.json and <shardset>.txt.

Resume: samples already recorded for the shard set are never written again. At start, shard files of the
set that the manifest does not record (left by a killed run) are deleted; the remaining clips are grouped
into new shards numbered after the last recorded one. Each shard is written under a temporary name,
renamed when whole, and recorded with its samples in one transaction.
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

JSON_FIELDS = ("clip_id", "video_id", "source", "source_id", "start_s", "end_s", "duration_s", "fps",
               "num_frames", "width", "height", "has_audio")


@dataclass
class ShardConfig:
    subset: str = "all"
    shardset: str | None = None        # default: the subset name
    maxcount: int = 1000
    maxsize: int = 1 << 30             # bytes per shard (mp4 + flac + json)
    flac: bool = True
    include_labels: bool = False       # labels are metadata; training shards omit them by default
    txt_kinds: tuple[str, ...] = ()    # e.g. ("AVS", "V") -> K.avs.txt, K.v.txt

    @property
    def name(self) -> str:
        return self.shardset or self.subset


def sample_json(row: dict, captions: dict, scores: dict, include_labels: bool) -> dict:
    d = {k: row[k] for k in JSON_FIELDS}
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
        if not KEY.match(self.cfg.name):
            raise ValueError(f"shard set name {self.cfg.name!r}: use letters, digits, '_' and '-'")

    @property
    def dir(self) -> Path:
        return self.corpus.shard_dir(self.cfg.name)

    def shard_file(self, index: int) -> str:
        return f"{self.cfg.name}/{self.cfg.name}-{index:06d}.tar"

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        cfg = self.cfg
        recorded = {r[0] for r in m.execute("SELECT path FROM shards WHERE shardset = ?", [cfg.name]).fetchall()}
        self.dir.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"^{re.escape(cfg.name)}-\d{{6}}\.tar$")
        for f in self.dir.iterdir():   # orphans of a killed run: unrecorded shards and temp files
            if (pattern.match(f.name) and f"{cfg.name}/{f.name}" not in recorded) or (f.name.startswith(".") and ".tmp" in f.name):
                f.unlink()
        wanted = m.subset_clip_ids(cfg.subset)
        done = {r[0] for r in m.execute("SELECT key FROM samples WHERE shardset = ?", [cfg.name]).fetchall()}
        todo = [c for c in wanted if c not in done]
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
            m.insert_rows("samples", [{"shardset": self.cfg.name, "key": s.key, "shard_index": plan["index"],
                                       "members": s.members, "sha256": s.sha256} for s in res.samples], mode="INSERT")
            stats.ok += 1
            stats.extra["samples"] = stats.extra.get("samples", 0) + len(res.samples)

    def finish(self, m: Manifest, stats: StageStats) -> None:
        write_indexes(m, self.corpus, self.cfg.name)


def write_indexes(m: Manifest, corpus: Corpus, shardset: str) -> Path:
    """<shardset>.wids.json (urls relative to the index) and <shardset>.txt (absolute paths)."""
    rows = m.rows("SELECT path, nsamples, bytes, md5 FROM shards WHERE shardset = ? ORDER BY shard_index", [shardset])
    d = corpus.shard_dir(shardset)
    d.mkdir(parents=True, exist_ok=True)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": shardset,
             "shardlist": [{"url": Path(r["path"]).name, "nsamples": r["nsamples"], "filesize": r["bytes"],
                            "md5sum": r["md5"]} for r in rows]}
    atomic_write_text(d / f"{shardset}.wids.json", json.dumps(index, indent=1))
    atomic_write_text(d / f"{shardset}.txt", "".join(f"{corpus.shards_dir / r['path']}\n" for r in rows))
    return d / f"{shardset}.wids.json"
