"""verify: the shards on disk, their wids index and the manifest tell the same story.

For every shard set: every recorded shard exists with its recorded size, sha256 and md5; its tar is whole
(no member cut off, the end-of-archive blocks present); every recorded sample is in its shard with its
recorded members and hash, and every tar member belongs to a recorded sample; every sample belongs to the
subset the set is made from, and every shard was written in the set's layout; the wids index lists exactly the
recorded shards, with their file sizes, sample counts and md5 sums; no other tar lies in the set's folder (a loader given the folder would read it).
Every problem of every shard is reported; a damaged shard never stops the check of the next one.
"""
from __future__ import annotations

import json
from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.manifest import Manifest
from ivdata.shards.layout import layout_hash
from ivdata.shards.tar import KEY, ShardError, file_digests, iter_tar_samples

SHOWN = 5   # sample keys named per problem line; the count says how many there are


def verify(corpus: Corpus, shardset: str | None = None) -> tuple[list[str], dict]:
    """(problems, counts). Raises ValueError for a shard set name that cannot be one."""
    if shardset is not None and not KEY.match(shardset):
        raise ValueError(f"shard set name {shardset!r}: use letters, digits, '_' and '-'")
    problems: list[str] = []
    counts = {"shards": 0, "samples": 0}
    with corpus.manifest(read_only=True) as m:
        known = [r[0] for r in m.execute("SELECT shardset FROM shards UNION SELECT shardset FROM shard_sets "
                                         "ORDER BY 1").fetchall()]
        if shardset is not None and shardset not in known:
            problems.append(f"{shardset}: no such shard set in the manifest (known: {', '.join(known) or 'none'})")
        for ss in ([shardset] if shardset is not None else known):
            if ss in known:
                problems += _verify_set(m, corpus, ss, counts)
    return problems, counts


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def _subset_of(m: Manifest, ss: str) -> tuple[str | None, set[str] | None, list[str]]:
    """The subset the set is made from and the sample keys it holds (None where unknown: clip ids, or the ids
    of their conversations in a conversation set), with the problem if it is gone."""
    row = m.execute("SELECT subset, layout FROM shard_sets WHERE shardset = ?", [ss]).fetchone()
    if row is None:
        return None, None, []
    subset, layout = row
    if subset != "all" and not m.scalar("SELECT count(*) FROM subset_defs WHERE name = ?", [subset]):
        return subset, None, [f"{ss}: made from subset {subset!r}, which no longer exists"]
    unit = json.loads(layout).get("unit", "clips") if layout else "clips"
    return subset, set(m.subset_sample_keys(subset, unit)), []


def _layout_hash(m: Manifest, ss: str) -> str | None:
    layout = m.scalar("SELECT layout FROM shard_sets WHERE shardset = ?", [ss])
    return layout_hash(layout) if layout else None


def _read_index(path: Path) -> tuple[dict[str, dict] | None, list[str]]:
    """url -> entry of a wids index, in its order, or the problem that kept it from being read."""
    try:
        entries = json.loads(path.read_text())["shardlist"]
        return {e["url"]: e for e in entries}, []
    except FileNotFoundError:
        return None, [f"{path.parent.name}: no wids index ({path.name})"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, [f"{path.parent.name}/{path.name}: unreadable wids index ({type(e).__name__}: {e})"]


def _verify_set(m: Manifest, corpus: Corpus, ss: str, counts: dict) -> list[str]:
    problems: list[str] = []
    shards = m.rows("SELECT * FROM shards WHERE shardset = ? ORDER BY shard_index", [ss])
    samples: dict[int, dict[str, dict]] = {}
    for r in m.rows("SELECT key, shard_index, members, sha256 FROM samples WHERE shardset = ?", [ss]):
        samples.setdefault(r["shard_index"], {})[r["key"]] = r
    unrecorded = sorted(set(samples) - {s["shard_index"] for s in shards})
    if unrecorded:
        problems.append(f"{ss}: samples point at unrecorded shards {unrecorded}")
    subset, members_of_subset, subset_problems = _subset_of(m, ss)
    problems += subset_problems
    d = corpus.shard_dir(ss)
    index, index_problems = _read_index(d / f"{ss}.wids.json")
    problems += index_problems
    layout = _layout_hash(m, ss)
    relayout = [s["path"] for s in shards if layout is not None and s.get("layout_hash") != layout]
    if relayout:
        problems.append(f"{ss}: {len(relayout)} shard(s) written in another layout than the set's (members, "
                        f"caption kinds, score metrics or options): {_names(relayout)} (`iv data shard` rewrites them)")

    for s in shards:
        counts["shards"] += 1
        rel, path = s["path"], corpus.shards_dir / s["path"]
        entry = index.pop(Path(rel).name, None) if index is not None else None
        if index is not None and entry is None:
            problems.append(f"{rel}: not listed in the wids index")
        if not path.exists():
            problems.append(f"{rel}: missing")
            continue
        try:
            sha, md5, size = file_digests(path)
        except OSError as e:
            problems.append(f"{rel}: unreadable ({e.strerror or e})")
            continue
        if size != s["bytes"]:
            problems.append(f"{rel}: {size} bytes, the manifest records {s['bytes']}")
        if sha != s["sha256"] or md5 != s["md5"]:
            problems.append(f"{rel}: content differs from the manifest (sha256/md5)")
        if entry is not None:
            if entry.get("filesize") != size:
                problems.append(f"{rel}: {size} bytes, the wids index says {entry.get('filesize')}")
            if entry.get("md5sum") != md5:
                problems.append(f"{rel}: md5 differs from the wids index")
            if entry.get("nsamples") != s["nsamples"]:
                problems.append(f"{rel}: the wids index says {entry.get('nsamples')} samples, "
                                f"the manifest {s['nsamples']}")
        in_tar = []
        try:
            for sample in iter_tar_samples(path):
                in_tar.append(sample)
        except ShardError as e:
            problems.append(f"{rel}: {str(e).removeprefix(f'{path.name}: ')}")
        counts["samples"] += len(in_tar)
        recorded = samples.get(s["shard_index"], {})
        foreign = [k for k, _, _ in in_tar if k not in recorded]
        if foreign:
            problems.append(f"{rel}: {len(foreign)} sample(s) not in the manifest: {_names(foreign)}")
        changed = [k for k, names, h in in_tar if k in recorded
                   and (list(recorded[k]["members"]) != names or recorded[k]["sha256"] != h)]
        if changed:
            problems.append(f"{rel}: {len(changed)} sample(s) differ from the manifest: {_names(changed)}")
        absent = set(recorded) - {k for k, _, _ in in_tar}
        if absent:
            problems.append(f"{rel}: {len(absent)} recorded sample(s) absent: {_names(absent)}")
        if len(in_tar) != s["nsamples"]:
            problems.append(f"{rel}: {len(in_tar)} samples read, the manifest records {s['nsamples']}")
        if members_of_subset is not None:
            outside = ({k for k, _, _ in in_tar} | set(recorded)) - members_of_subset
            if outside:
                problems.append(f"{rel}: {len(outside)} sample(s) not in subset {subset!r}: {_names(outside)} "
                                f"(`iv data shard --subset {subset}` rewrites the set)")

    if index:
        problems += [f"{ss}: the wids index lists {url}, which the manifest does not record" for url in index]
    recorded_names = {Path(s["path"]).name for s in shards}
    if d.exists():
        problems += [f"{ss}/{f.name}: tar file not in the manifest" for f in sorted(d.iterdir())
                     if f.suffix == ".tar" and f.name not in recorded_names]
    return problems
