"""Kill a stage with SIGKILL at a random point, rerun it: nothing lost, nothing duplicated."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ivdata import pipeline
from ivdata.media.probe import count_frames_decoded
from ivdata.media.synth import make_video
from ivdata.stages.split import SplitConfig


def iv_command() -> list[str]:
    exe = Path(sys.executable).parent / "iv"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from cli import app; app()"]


@pytest.fixture(scope="module")
def windowed_corpus(tmp_path_factory):
    """4 videos x 12 s in 2 s fixed windows = 24 clips, probed and split, not yet cut."""
    home = tmp_path_factory.mktemp("resume")
    src = home / "src"
    for i in range(4):
        make_video(src / f"v{i}.mp4", seconds=12, fps=25, size=(192, 144), audio="tone" if i % 2 else None,
                   seed=i, gop=25)
    c = pipeline.open_or_init("resume", home)
    pipeline.ingest(c, [str(src)])
    pipeline.probe(c)
    pipeline.split(c, SplitConfig(method="fixed", window_s=2.0))
    return c


def _kill_when(cmd: list[str], env: dict, ready, seed: int, timeout: float = 300) -> tuple[bool, str]:
    """Start cmd; SIGKILL it as soon as ready() turns true (plus a random few ms).
    Returns (killed mid-run?, the process's stderr when it ended on its own)."""
    rng = random.Random(seed)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if ready():
            time.sleep(rng.uniform(0, 0.05))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, ""
        time.sleep(0.005)
    proc.wait()
    return False, f"exit {proc.returncode}: " + proc.stderr.read().decode(errors="replace")[-3000:]


def _env(corpus) -> dict:
    return {**os.environ, "IVKIT_HOME": str(corpus.manifest_path.parent.parent), "IVKIT_PROGRESS": "0"}


def test_sigkill_during_cut_then_rerun(windowed_corpus):
    c = windowed_corpus
    seed = random.SystemRandom().randrange(1 << 30)
    k = random.Random(seed).randint(2, 16)
    count = lambda: sum(1 for _ in c.clips_dir.rglob("*.mp4")) if c.clips_dir.exists() else 0
    killed, _ = _kill_when(iv_command() + ["data", "cut", "-c", "resume", "--mode", "copy"], _env(c),
                           lambda: count() >= k, seed)
    print(f"seed={seed} k={k} killed={killed}")
    pipeline.cut(c)   # the rerun
    with c.manifest(read_only=True) as m:
        rows = m.rows("SELECT clip_id, status, path, num_frames FROM clips")
    assert len(rows) == 24 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert count_frames_decoded(r["path"])[0] == r["num_frames"] >= 50  # whole GOPs covering 2 s
    assert not list((c.clips_dir / "incoming").iterdir())   # the killed run's half-made files are gone
    assert not list(c.clips_dir.rglob(".*"))


def test_sigkill_during_shard_then_rerun(windowed_corpus):
    c = windowed_corpus
    pipeline.cut(c)
    seed = random.SystemRandom().randrange(1 << 30)
    # at most half of the 24 tars: with k up to 20 the last few tiny tars were once written, and the run
    # recorded as finished, in the few ms between the count and the kill
    k = random.Random(seed).randint(1, 12)
    d = c.shard_dir("all")
    count = lambda: len(list(d.glob("all-*.tar"))) if d.exists() else 0
    killed, err = _kill_when(iv_command() + ["data", "shard", "-c", "resume", "--maxcount", "1"], _env(c),
                             lambda: count() >= k, seed)
    print(f"seed={seed} k={k} killed={killed}")
    assert killed, f"the shard run ended before it could be killed (seed {seed}, k {k}): {err}"
    res = subprocess.run(iv_command() + ["data", "shard", "-c", "resume", "--maxcount", "1"], env=_env(c),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run(iv_command() + ["data", "verify", "-c", "resume"], env=_env(c), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:]
    with c.manifest(read_only=True) as m:
        keys = [r[0] for r in m.execute("SELECT key FROM samples WHERE shardset = 'all'").fetchall()]
        clip_ids = {r[0] for r in m.execute("SELECT clip_id FROM clips WHERE status = 'ok'").fetchall()}
    assert sorted(keys) == sorted(clip_ids) and len(keys) == 24
    with c.manifest(read_only=True) as m:   # the killed run is marked as such, not left 'running'
        assert m.scalar("SELECT count(*) FROM runs WHERE status = 'running'") == 0
        assert m.scalar("SELECT count(*) FROM runs WHERE stage = 'shard' AND status = 'killed'") == 1
    # And in the tars themselves, each clip appears exactly once.
    import webdataset as wds
    seen = [s["__key__"] for s in wds.WebDataset([str(p) for p in c.shard_list("all")], shardshuffle=False)]
    assert sorted(seen) == sorted(clip_ids)


def test_a_shard_set_with_one_recorded_shard_grows_after_it(windowed_corpus):
    """What a run killed right after its first shard leaves: shard 0 recorded. The next run must number its
    shards from 1 (it once restarted at 0 and failed on the primary key: seen in CI as a rare failure of
    the SIGKILL test above, when the kill came just after the first commit)."""
    from ivdata.manifest import Manifest
    from ivdata.stages.shard import ShardConfig

    c = windowed_corpus
    pipeline.cut(c)
    with c.manifest() as m:
        first = m.subset_clip_ids("all")[0]
        m.select_subset("first_clip", sql=f"SELECT '{first}' AS clip_id")
    pipeline.shard(c, ShardConfig(subset="first_clip", shardset="grow", maxcount=1))
    pipeline.shard(c, ShardConfig(subset="all", shardset="grow", maxcount=1))
    with Manifest(c.manifest_path, read_only=True) as m:
        indexes = [r[0] for r in m.execute("SELECT shard_index FROM shards WHERE shardset = 'grow' ORDER BY 1").fetchall()]
        keys = [r[0] for r in m.execute("SELECT key FROM samples WHERE shardset = 'grow'").fetchall()]
        assert m.scalar("SELECT shard_index FROM samples WHERE shardset = 'grow' AND key = ?", [first]) == 0
    assert indexes == list(range(24)) and sorted(keys) == sorted(set(keys)) and len(keys) == 24
