"""verify: the shards on disk and the manifest tell the same story.

Every recorded shard exists with its recorded size and sha256; every recorded sample is in its shard
with its recorded members and hash; every tar member belongs to a recorded sample; no unrecorded shard
file lies in a shard set's folder; the wids index matches the manifest.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ivdata.corpus import Corpus
from ivdata.shards.tar import ShardError, file_digests, read_tar_samples


def verify(corpus: Corpus, shardset: str | None = None) -> tuple[list[str], dict]:
    problems: list[str] = []
    counts = {"shards": 0, "samples": 0}
    with corpus.manifest(read_only=True) as m:
        sets = [shardset] if shardset else [r[0] for r in m.execute("SELECT DISTINCT shardset FROM shards ORDER BY 1").fetchall()]
        for ss in sets:
            shards = m.rows("SELECT * FROM shards WHERE shardset = ? ORDER BY shard_index", [ss])
            samples: dict[int, dict[str, dict]] = {}
            for r in m.rows("SELECT key, shard_index, members, sha256 FROM samples WHERE shardset = ?", [ss]):
                samples.setdefault(r["shard_index"], {})[r["key"]] = r
            if set(samples) - {s["shard_index"] for s in shards}:
                problems.append(f"{ss}: samples point at unrecorded shards {sorted(set(samples) - {s['shard_index'] for s in shards})}")
            for s in shards:
                path = corpus.shards_dir / s["path"]
                counts["shards"] += 1
                if not path.exists():
                    problems.append(f"{s['path']}: missing")
                    continue
                sha, md5, n = file_digests(path)
                if (sha, n) != (s["sha256"], s["bytes"]):
                    problems.append(f"{s['path']}: size/sha256 differ from the manifest")
                try:
                    in_tar = read_tar_samples(path)
                except (ShardError, OSError, EOFError) as e:
                    problems.append(f"{s['path']}: unreadable tar: {e}")
                    continue
                recorded = samples.get(s["shard_index"], {})
                for key, members, h in in_tar:
                    rec = recorded.get(key)
                    if rec is None:
                        problems.append(f"{s['path']}: sample {key} is not in the manifest")
                    elif list(rec["members"]) != members or rec["sha256"] != h:
                        problems.append(f"{s['path']}: sample {key} differs from the manifest")
                    counts["samples"] += 1
                missing = set(recorded) - {k for k, _, _ in in_tar}
                problems += [f"{s['path']}: recorded sample {k} is absent" for k in sorted(missing)]
                if len(in_tar) != s["nsamples"]:
                    problems.append(f"{s['path']}: {len(in_tar)} samples, manifest says {s['nsamples']}")
            d = corpus.shard_dir(ss)
            names = {Path(s["path"]).name for s in shards}
            pat = re.compile(rf"^{re.escape(ss)}-\d{{6}}\.tar$")
            if d.exists():
                problems += [f"{ss}/{f.name}: shard file not in the manifest" for f in d.iterdir()
                             if pat.match(f.name) and f.name not in names]
            idx = d / f"{ss}.wids.json"
            if not idx.exists():
                problems.append(f"{ss}: no wids index")
            else:
                listed = [(e["url"], e["nsamples"], e["md5sum"]) for e in json.loads(idx.read_text())["shardlist"]]
                if listed != [(Path(s["path"]).name, s["nsamples"], s["md5"]) for s in shards]:
                    problems.append(f"{ss}: wids index differs from the manifest")
    return problems, counts
