"""shard: a named subset -> WebDataset tars and a wids index.

needs: clips with status 'ok', captions, scores, subsets (and conversations for instruction sets).
produces: shards, samples, the tar files, <shardset>.wids.json and <shardset>.txt.

A sample is a clip (a video clip or an image), or, in a set of unit 'conversations', one conversation linked
to a clip of the subset (key = conversation_id). Members: the media (`K.mp4`, or the image `K.jpg`/`.png`/
`.webp`), `K.json`, `K.flac` for video samples (a silent placeholder with `has_audio: false` where the clip has
no audio), one `K.<kind>.txt` per --txt kind (empty where the sample has no caption of that kind) and, in
conversation sets, `K.conversations.json`.

Every sample of a set has the same members and its json the same keys: the set's layout (unit, flac, txt
kinds, caption pins, the caption kinds and score metrics of its samples, labels) is recorded in `shard_sets`
and, as a hash, on every shard. Readers that infer one schema from the first samples (Hugging Face's
webdataset loader) need this. A json value that is unknown is left out rather than written as null (null
would give such a reader a column of no type), each caption kind of the layout is present in every sample's
`captions` ({"text", "model", "prompt_hash", "lang"}; text "" where the sample has none), and a score the
sample lacks is left out. A set whose subset mixes images and videos cannot have one member set: it is written
(webdataset, wids and ivtrain read it) and the run says so.

Which caption of a kind: the newest (by created_at), unless `--captions KIND=MODEL[@PROMPT_HASH]` pins the
model (and prompt hash) whose caption goes in.

A shard set holds exactly its subset, in its layout. Samples the subset gained go into new shards numbered after
the last recorded one; recorded shards are never written again. A recorded shard that holds a sample the subset
has lost (a narrowed selection, a dedupe or leakage run that dropped it), or that was written in another layout
(new caption kinds or score metrics, other options), is stale: its samples that are still wanted are written
again into new shards, then the wids index is rewritten without the stale shards (readers switch in one
rename), their rows are dropped, and last their files.

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
from ivdata.links import refresh_links
from ivdata.manifest import Manifest, utcnow
from ivdata.media.audio import silent_flac
from ivdata.shards.layout import layout_hash
from ivdata.shards.tar import KEY, WrittenShard, write_tar
from ivdata.stages.base import Stage, StageConfigError, StageStats, failed

JSON_FIELDS = ("clip_id", "video_id", "media", "source", "source_id", "duration_s", "fps", "num_frames", "width",
               "height")
CONVERSATION_FIELDS = ("conversation_id", "dataset", "task", "format", "entry_id")
UNITS = ("clips", "conversations")
FLAC_RATE = 16000
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class CaptionPin:
    """`KIND=MODEL[@PROMPT_HASH]`: the caption of KIND that goes into a shard is MODEL's (with that prompt hash)."""
    kind: str
    model: str
    prompt_hash: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "CaptionPin":
        kind, sep, rest = spec.partition("=")
        model, at, phash = rest.rpartition("@") if "@" in rest else (rest, "", None)
        if not sep or not kind.strip() or not model.strip() or (at and not phash.strip()):
            raise ValueError(f"--captions {spec!r}: expected KIND=MODEL or KIND=MODEL@PROMPT_HASH")
        return cls(kind.strip(), model.strip(), phash.strip() if at else None)

    def matches(self, model: str, prompt_hash: str) -> bool:
        return model == self.model and (self.prompt_hash is None or prompt_hash == self.prompt_hash)

    def __str__(self) -> str:
        return f"{self.kind}={self.model}" + (f"@{self.prompt_hash}" if self.prompt_hash is not None else "")


@dataclass
class ShardConfig:
    subset: str = "all"
    shardset: str | None = None        # default: the subset name
    maxcount: int = 1000
    maxsize: int = 1 << 30             # bytes per shard (media + flac + json)
    flac: bool = True                  # K.flac for every video sample (a silent placeholder where it has no audio)
    include_labels: bool = False       # labels are metadata; training shards omit them by default
    txt_kinds: tuple[str, ...] = ()    # e.g. ("AVS", "V") -> K.avs.txt, K.v.txt
    captions: tuple[CaptionPin, ...] = ()   # pinned caption per kind (default: the newest)
    unit: str = "clips"                # clips | conversations (one sample per imported conversation)

    def __post_init__(self):
        if not KEY.match(self.name):
            raise ValueError(f"shard set name {self.name!r}: use letters, digits, '_' and '-'")
        if self.maxcount < 1 or self.maxsize < 1:
            raise ValueError("--maxcount and --maxsize must be at least 1")
        if self.unit not in UNITS:
            raise ValueError(f"sample unit {self.unit!r}: one of {', '.join(UNITS)}")
        kinds = [p.kind for p in self.captions]
        if len(kinds) != len(set(kinds)):
            raise ValueError(f"--captions pins one caption per kind, got {', '.join(map(str, self.captions))}")
        for k in self.txt_kinds:
            if not re.fullmatch(r"[A-Za-z0-9]+", k):
                raise ValueError(f"--txt kind {k!r}: letters and digits")

    @property
    def name(self) -> str:
        return self.shardset or self.subset

    def pin(self, kind: str) -> CaptionPin | None:
        return next((p for p in self.captions if p.kind == kind), None)


@dataclass(frozen=True)
class Silence:
    """A placeholder FLAC member of `samples` zeros, made by the worker that writes the shard."""
    samples: int


def member_size(value) -> int:
    """Bytes a member will take (a placeholder's few KB are not counted)."""
    if isinstance(value, bytes):
        return len(value)
    return os.path.getsize(value) if isinstance(value, Path) and value.exists() else 0


def drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def sample_json(row: dict, captions: dict, scores: dict, include_labels: bool, has_audio: bool) -> dict:
    d = drop_none({k: row.get(k) for k in JSON_FIELDS})
    # start_s/end_s: the span the mp4 holds, in seconds of its source (a stream copy starts at the keyframe
    # at or before the span asked for and ends at the first one after it); requested_*: the span asked for
    held = row.get("cut_start_s") is not None
    d.update(drop_none({"start_s": row.get("cut_start_s") if held else row.get("start_s"),
                        "end_s": row.get("cut_end_s") if held else row.get("end_s"),
                        "requested_start_s": row.get("start_s"), "requested_end_s": row.get("end_s")}))
    d["has_audio"] = bool(has_audio)
    d["captions"], d["scores"] = captions, scores
    if include_labels:
        d.update(drop_none({"label": row.get("label"), "split": row.get("split")}))
    return d


def choose_captions(rows: list[tuple], pins: ShardConfig) -> dict[str, dict[str, dict]]:
    """clip_id -> kind -> caption object, from (clip_id, kind, text, lang, model, prompt_hash) rows ordered
    oldest first: the newest of each kind, or the newest of the pinned model (and prompt hash)."""
    out: dict[str, dict[str, dict]] = {}
    for cid, kind, text, lang, model, phash in rows:
        pin = pins.pin(kind)
        if pin is not None and not pin.matches(model, phash):
            continue
        out.setdefault(cid, {})[kind] = {"text": text, "model": model, "prompt_hash": phash, "lang": lang or ""}
    return out


BLANK_CAPTION = {"text": "", "model": "", "prompt_hash": "", "lang": ""}
CAPTIONS_SQL = ("SELECT clip_id, kind, text, lang, model, prompt_hash FROM captions "
                "WHERE clip_id IN (SELECT unnest(?::VARCHAR[])) AND text IS NOT NULL AND trim(text) <> '' "
                "ORDER BY created_at, model, prompt_hash")


class ShardStage(Stage):
    name = "shard"
    needs = ("clips.path", "captions", "scores", "subsets", "conversations")
    # + the tar files and the wids index; captions and conversations.clip_id: links made before reading them
    produces = ("shards", "samples", "shard_sets", "captions", "conversations.clip_id")

    def __init__(self, corpus: Corpus, cfg: ShardConfig | None = None):
        super().__init__(corpus)
        self.cfg = cfg or ShardConfig()
        self._stale: list[int] = []        # shard indexes of this set that finish() drops
        self._layout_hash = ""
        self._notes: dict = {}

    @property
    def dir(self) -> Path:
        return self.corpus.shard_dir(self.cfg.name)

    def shard_file(self, index: int) -> str:
        return f"{self.cfg.name}/{self.cfg.name}-{index:06d}.tar"

    def check(self, m: Manifest, retry_failed: bool) -> None:
        """An unknown subset, or a pin that names no caption in the manifest (a typo, not an empty kind): refused
        up front."""
        m.subset_sample_keys(self.cfg.subset, self.cfg.unit)          # raises ManifestError for an unknown subset
        for pin in self.cfg.captions:
            have = m.rows("SELECT model, prompt_hash, count(*) AS n FROM captions WHERE kind = ? AND text <> '' "
                          "GROUP BY ALL ORDER BY n DESC", [pin.kind])
            if not any(pin.matches(r["model"], r["prompt_hash"]) for r in have):
                known = ", ".join(f"{r['model']}@{r['prompt_hash']} ({r['n']})" for r in have[:8]) or "none"
                raise StageConfigError(f"--captions {pin}: no caption of kind {pin.kind} by that model"
                                       + (" and prompt hash" if pin.prompt_hash is not None else "")
                                       + f" in the manifest; recorded for {pin.kind}: {known}")

    def layout(self, m: Manifest, clip_ids: list[str]) -> dict:
        """What every sample of the set carries (see the module docstring)."""
        cfg = self.cfg
        kinds = set()
        for kind, model, phash in m.execute(
                "SELECT DISTINCT kind, model, prompt_hash FROM captions WHERE clip_id IN "
                "(SELECT unnest(?::VARCHAR[])) AND text IS NOT NULL AND trim(text) <> ''", [clip_ids]).fetchall():
            pin = cfg.pin(kind)
            if pin is None or pin.matches(model, phash):
                kinds.add(kind)
        metrics = [r[0] for r in m.execute("SELECT DISTINCT metric FROM scores WHERE clip_id IN "
                                           "(SELECT unnest(?::VARCHAR[])) ORDER BY 1", [clip_ids]).fetchall()]
        return {"version": LAYOUT_VERSION, "unit": cfg.unit, "flac": cfg.flac,
                "txt": sorted(k.lower() for k in cfg.txt_kinds), "pins": sorted(str(p) for p in cfg.captions),
                "caption_kinds": sorted(kinds), "score_metrics": metrics, "labels": cfg.include_labels}

    def cleanup(self, m: Manifest) -> None:
        """Orphans of a killed run: shard files of the set that the manifest does not record, and temp files."""
        name = self.cfg.name
        recorded = {r[0] for r in m.execute("SELECT path FROM shards WHERE shardset = ?", [name]).fetchall()}
        self.dir.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"^{re.escape(name)}-\d{{6,}}\.tar$")
        for f in self.dir.iterdir():
            if (pattern.match(f.name) and f"{name}/{f.name}" not in recorded) or (f.name.startswith(".") and ".tmp" in f.name):
                f.unlink()

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        cfg = self.cfg
        refresh_links(m)                                   # list captions and conversations of clips made since
        wanted = m.subset_sample_keys(cfg.subset, cfg.unit)
        conversations = {}
        if cfg.unit == "conversations":
            conversations = {r["conversation_id"]: r for r in m.rows(
                "SELECT * FROM conversations WHERE conversation_id IN (SELECT unnest(?::VARCHAR[]))", [wanted])}
        clip_of = {k: conversations[k]["clip_id"] for k in wanted} if conversations else {k: k for k in wanted}
        layout = self.layout(m, sorted(set(clip_of.values())))
        text = json.dumps(layout, sort_keys=True)
        self._layout_hash = layout_hash(text)
        m.execute("INSERT OR REPLACE INTO shard_sets (shardset, subset, updated_at, layout) VALUES (?, ?, ?, ?)",
                  [cfg.name, cfg.subset, utcnow(), text])
        placed = dict(m.execute("SELECT key, shard_index FROM samples WHERE shardset = ?", [cfg.name]).fetchall())
        other_layout = [r[0] for r in m.execute(
            "SELECT shard_index FROM shards WHERE shardset = ? AND layout_hash IS DISTINCT FROM ?",
            [cfg.name, self._layout_hash]).fetchall()]
        self._stale = sorted(set(stale_shards(m, cfg.name, set(wanted), placed)) | set(other_layout))
        if other_layout:
            self._notes["relayout_shards"] = len(other_layout)
        stale = set(self._stale)
        todo = [k for k in wanted if k not in placed or placed[k] in stale]
        if not todo:
            return []
        todo_clips = sorted({clip_of[k] for k in todo})
        rows = {r["clip_id"]: r for r in m.rows(
            "SELECT ci.* FROM clip_info ci WHERE ci.clip_id IN (SELECT unnest(?::VARCHAR[]))", [todo_clips])}
        captions = choose_captions(m.execute(CAPTIONS_SQL, [todo_clips]).fetchall(), cfg)
        scores: dict[str, dict] = {}
        for cid, metric, value in m.execute(
                "SELECT clip_id, metric, value FROM scores WHERE clip_id IN (SELECT unnest(?::VARCHAR[])) "
                "AND value IS NOT NULL ORDER BY metric, model", [todo_clips]).fetchall():
            scores.setdefault(cid, {})[metric] = value
        # coalesce in SQL: `max(...) or -1` in Python read a recorded shard 0 as "none", and a run killed
        # after its first shard restarted at index 0 and failed on the primary key
        start = m.scalar("SELECT coalesce(max(shard_index), -1) + 1 FROM shards WHERE shardset = ?", [cfg.name])
        plans, cur, size, member_sets = [], [], 0, set()
        for key in todo:
            cid = clip_of[key]
            plan = self._plan_sample(key, rows[cid], captions.get(cid, {}), scores.get(cid, {}), layout,
                                     conversations.get(key))
            member_sets.add(tuple(ext for ext, _ in plan["members"]))
            est = sum(member_size(v) for _, v in plan["members"])
            if cur and (len(cur) >= cfg.maxcount or size + est > cfg.maxsize):
                plans.append(cur)
                cur, size = [], 0
            cur.append(plan)
            size += est
        if cur:
            plans.append(cur)
        if len(member_sets) > 1:
            self._notes["member_sets"] = sorted(".".join(s) for s in member_sets)
        return [{"index": start + i, "samples": p} for i, p in enumerate(plans)]

    def _plan_sample(self, key: str, row: dict, captions: dict, scores: dict, layout: dict,
                     conversation: dict | None) -> dict:
        """A sample's members in order: (ext, bytes | Path | Silence)."""
        cfg = self.cfg
        video = row["media"] == "video"
        audio = row["audio_path"] if (video and row["has_audio"] and row["audio_path"]) else None
        has_audio = bool(audio) if (cfg.flac and video) else bool(row["has_audio"])
        caps = {k: captions.get(k, BLANK_CAPTION) for k in layout["caption_kinds"]}
        meta = sample_json(row, caps, scores, cfg.include_labels, has_audio)
        if conversation is not None:
            meta.update(drop_none({k: conversation[k] for k in CONVERSATION_FIELDS}))
        media_ext = "mp4" if video else Path(row["path"]).suffix.lstrip(".").lower()
        members: list[tuple[str, object]] = [(media_ext, Path(row["path"])),
                                             ("json", json.dumps(meta, sort_keys=True, default=str).encode())]
        if cfg.flac and video:
            members.append(("flac", Path(audio) if audio else
                            Silence(max(1, round((row["duration_s"] or 0.0) * FLAC_RATE)))))
        for kind in layout["txt"]:
            text = next((c["text"] for k, c in captions.items() if k.lower() == kind), "")
            members.append((f"{kind}.txt", text.encode()))
        if conversation is not None:
            members.append(("conversations.json", json.dumps(json.loads(conversation["turns"]),
                                                             ensure_ascii=False).encode()))
        return {"key": key, "members": members}

    def work(self, plan: dict) -> WrittenShard:
        samples = []
        for sample in plan["samples"]:
            samples.append((sample["key"], [(ext, silent_flac(v.samples, FLAC_RATE) if isinstance(v, Silence) else v)
                                            for ext, v in sample["members"]]))
        return write_tar(self.corpus.shards_dir / self.shard_file(plan["index"]), samples)

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        for plan, res in done:
            if failed(res):
                stats.failed += 1
                raise RuntimeError(f"shard {self.shard_file(plan['index'])} failed: {res.reason}")
            m.insert_rows("shards", [{
                "shardset": self.cfg.name, "shard_index": plan["index"], "path": self.shard_file(plan["index"]),
                "sha256": res.sha256, "md5": res.md5, "nsamples": len(res.samples), "bytes": res.bytes,
                "created_at": utcnow(), "layout_hash": self._layout_hash}], mode="INSERT")
            # OR REPLACE: a sample moved out of a stale shard now points at its new one
            m.insert_rows("samples", [{"shardset": self.cfg.name, "key": s.key, "shard_index": plan["index"],
                                       "members": s.members, "sha256": s.sha256} for s in res.samples],
                          mode="INSERT OR REPLACE")
            stats.ok += 1
            stats.extra["samples"] = stats.extra.get("samples", 0) + len(res.samples)

    def finish(self, m: Manifest, stats: StageStats) -> None:
        stats.extra.update(self._notes)
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
