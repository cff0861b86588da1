"""SIGKILL during an image download run and during an instruction import, then the same command again: nothing
lost, nothing twice, and the shards made from the result verify clean."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
from static_http import RangeHandler, serve
from test_core_resume import _env, _kill_when, iv_command
from test_data_importers import image

from ivdata import pipeline
from ivdata.shards.verify import verify
from ivdata.stages.instructions import import_instructions
from ivdata.stages.shard import ShardConfig

NIMAGES = 40


def _run(c, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(iv_command() + [*args, "-c", str(c.manifest_path)], env=_env(c), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res


def test_sigkill_during_image_downloads_then_rerun(tmp_path):
    www = tmp_path / "www"
    served = {f"img{i:03d}.jpg": image(www / f"img{i:03d}.jpg", i).read_bytes() for i in range(NIMAGES)}
    c = pipeline.open_or_init("dl", tmp_path)
    seed = random.SystemRandom().randrange(1 << 30)
    k = random.Random(seed).randint(18, 30)             # after the first batch of 16 has committed, before the end
    with serve(www, delay_s=0.05) as base:
        pq.write_table(pa.Table.from_pylist([{"url": f"{base}/{name}", "caption": f"picture {name}"}
                                             for name in served]), tmp_path / "part-00000.parquet")
        killed, err = _kill_when(iv_command() + ["data", "ingest", str(tmp_path / "part-00000.parquet"),
                                                 "-c", str(c.manifest_path)], _env(c),
                                 lambda: len(RangeHandler.served) >= k, seed)
        assert killed, f"the ingest ended before it could be killed (seed {seed}, k {k}): {err}"
        with c.manifest(read_only=True) as m:
            before = m.scalar("SELECT count(*) FROM videos")
        print(f"seed={seed} k={k}: {before} of {NIMAGES} recorded when killed")
        assert before < NIMAGES
        _run(c, "data", "ingest", str(tmp_path / "part-00000.parquet"))          # the same command again
    pipeline.images(c)
    pipeline.shard(c, ShardConfig(txt_kinds=("web",)))
    assert verify(c) == ([], {"shards": 1, "samples": NIMAGES})
    with c.manifest(read_only=True) as m:
        rows = m.rows("SELECT uri, sha256, status, path FROM videos")
        clips = m.scalar("SELECT count(*) FROM clips WHERE media = 'image' AND status = 'ok'")
        captions = m.scalar("SELECT count(*) FROM captions WHERE kind = 'web'")
        samples = m.scalar("SELECT count(*) FROM samples")
        runs = dict(m.execute("SELECT status, count(*) FROM runs WHERE stage = 'ingest' GROUP BY 1").fetchall())
    assert len(rows) == NIMAGES == len({r["uri"] for r in rows}) == clips == captions == samples
    for r in rows:           # every file whole, downloaded once
        assert r["status"] == "probed" and r["sha256"] == hashlib.sha256(served[r["uri"].rsplit("/", 1)[1]]).hexdigest()
    downloads = sorted(p.name for p in c.downloads_dir.iterdir())
    assert len(downloads) == NIMAGES and not [n for n in downloads if n.endswith(".part") or n.startswith(".")]
    assert runs == {"killed": 1, "ok": 1}


def test_sigkill_during_instruction_import_then_rerun(tmp_path):
    media = tmp_path / "media"
    for i in range(3):
        image(media / f"img{i}.jpg", i)
    n = 5000
    entries = [{"id": f"q{j}", "image": f"img{j % 3}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {j}?"}, {"from": "gpt", "value": f"Answer {j}."},
        {"from": "human", "value": "And then?"}, {"from": "gpt", "value": f"Then {j + 1}."}]} for j in range(n)]
    entries[7]["conversations"][1]["from"] = "bot"                          # one malformed entry, recorded
    (tmp_path / "llava_big.json").write_text(json.dumps(entries))
    cmd = ["data", "import-instructions", str(tmp_path / "llava_big.json"), "--format", "llava",
           "--media-root", str(media)]
    reference = pipeline.open_or_init("reference", tmp_path)
    import_instructions(reference, tmp_path / "llava_big.json", "llava", media)
    c = pipeline.open_or_init("killed", tmp_path)
    seed = random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    wal = c.manifest_path.with_name(c.manifest_path.name + ".wal")
    partial = None
    for attempt in range(8):      # kill once the import has committed something, until a kill lands mid-import
        grown = wal.stat().st_size if wal.exists() else 0
        threshold = grown + rng.randint(1, 2) * 100_000
        killed, err = _kill_when(iv_command() + cmd + ["-c", str(c.manifest_path)], _env(c),
                                 lambda: wal.exists() and wal.stat().st_size >= threshold, seed + attempt)
        with c.manifest(read_only=True) as m:
            done = m.scalar("SELECT count(*) FROM conversations")
        print(f"seed={seed} attempt={attempt} killed={killed}: {done} of {n} recorded")
        if killed and 0 < done < n:
            partial = done
            break
    assert partial, f"no kill landed in the middle of the import (seed {seed})"
    _run(c, *cmd)                                                         # the same command again
    pipeline.images(c)
    with c.manifest() as m:
        m.select_subset("pictures", where="media = 'image'")
    pipeline.shard(c, ShardConfig(subset="pictures", unit="conversations", maxcount=n))
    assert verify(c)[0] == []

    def conversations(corpus):
        with corpus.manifest(read_only=True) as m:
            return m.execute("SELECT conversation_id, entry_index, entry_id, status, error, turns, media_path "
                             "FROM conversations ORDER BY conversation_id").fetchall()
    got = conversations(c)
    assert got == conversations(reference) and len(got) == n                  # the same as a run never killed
    assert [r[3] for r in got].count("failed") == 1
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM videos") == 3                   # media registered once
        assert m.scalar("SELECT count(*) FROM samples") == n - 1
        assert m.scalar("SELECT count(*) FROM runs WHERE status = 'killed'") >= 1
