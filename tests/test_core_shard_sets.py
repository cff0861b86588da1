"""A shard set holds exactly its subset, and `iv data verify` finds every damage of every shard."""
from __future__ import annotations

import json
import tarfile

import pytest
from typer.testing import CliRunner

from cli import app
from ivdata import pipeline
from ivdata.manifest import Manifest
from ivdata.shards.tar import read_tar_samples
from ivdata.shards.verify import verify
from ivdata.stages.shard import ShardConfig

runner = CliRunner()


def iv(corpus, *args: str):
    return runner.invoke(app, [*args, "-c", str(corpus.manifest_path)])


def keys_in_index(corpus, shardset: str) -> list[str]:
    """Every sample key of the shards the wids index lists, read from the tars themselves."""
    index = json.loads(corpus.wids_index(shardset).read_text())
    d = corpus.shard_dir(shardset)
    return [k for e in index["shardlist"] for k, _, _ in read_tar_samples(d / e["url"])]


def clip_ids(corpus, where: str = "true") -> list[str]:
    with corpus.manifest(read_only=True) as m:
        return [r[0] for r in m.execute(f"SELECT clip_id FROM clips WHERE status = 'ok' AND ({where}) "
                                        "ORDER BY clip_id").fetchall()]


# ------------------------------------------------------------------------------------------------- verify
def test_verify_reports_every_damage_of_every_shard(small_corpus):
    c = small_corpus
    first, second = c.shard_list("all")
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    last_key = members[-1].name.split(".")[0]
    boundary = next(m.offset for m in members if m.name.startswith(last_key + "."))
    first.write_bytes(first.read_bytes()[:boundary])             # cut between samples: a readable, shorter tar
    data = second.read_bytes()
    second.write_bytes(data[:len(data) // 3])                    # cut inside a member
    (c.shard_dir("all") / "all-000000 (copy).tar").write_bytes(b"")
    (c.shard_dir("all") / "[bold]old.tar").write_bytes(b"")

    res = iv(c, "data", "verify")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    problems, counts = verify(c)
    text = "\n".join(problems)
    assert counts["shards"] == 2
    for shard in (first, second):
        lines = [p for p in problems if p.startswith(f"all/{shard.name}:")]
        assert any("the wids index says" in p and "bytes" in p for p in lines), lines
        assert any("the manifest records" in p and "bytes" in p for p in lines), lines
        assert any("md5 differs from the wids index" in p for p in lines), lines
        assert any("cut short" in p for p in lines), lines
        assert any("recorded sample(s) absent" in p for p in lines), lines
    before_cut = members[[m.offset for m in members].index(boundary) - 1].name
    assert f"all/{first.name}: cut short after member {before_cut}" in text
    assert f"1 recorded sample(s) absent: {last_key}" in text
    assert "all/all-000000 (copy).tar: tar file not in the manifest" in text
    assert "all/[bold]old.tar: tar file not in the manifest" in text
    assert all(p in res.output for p in problems) and f"{len(problems)} problems" in res.output


def test_verify_goes_on_past_a_shard_it_cannot_read_or_find(small_corpus):
    first, second = small_corpus.shard_list("all")
    first.unlink()
    first.mkdir()                                               # in the way: open() fails with an OSError
    problems, counts = verify(small_corpus)
    assert problems == [f"all/{first.name}: unreadable (Is a directory)"] and counts == {"shards": 2, "samples": 4}
    second.unlink()
    assert verify(small_corpus)[0] == [f"all/{first.name}: unreadable (Is a directory)", f"all/{second.name}: missing"]


def test_verify_rejects_a_shard_set_name_that_is_a_path_and_reports_an_unknown_one(small_corpus):
    res = iv(small_corpus, "data", "verify", "--shardset", "../all")
    assert res.exit_code == 2 and "shard set name" in res.output and "Traceback" not in res.output
    res = iv(small_corpus, "data", "verify", "--shardset", "nosuch")
    assert res.exit_code == 1 and "no such shard set" in res.output


# --------------------------------------------------------------------------------------------- re-shard
def test_narrowing_a_subset_and_resharding_leaves_exactly_the_subset(small_corpus):
    c = small_corpus
    assert iv(c, "manifest", "select", "s1", "--where", "true").exit_code == 0
    res = iv(c, "data", "shard", "--subset", "s1", "--maxcount", "3")          # shards of 3, 3, 2 clips
    assert res.exit_code == 0 and "3 ok" in res.output, res.output
    ids = clip_ids(c)
    kept_shard = c.shard_list("s1")[1]
    kept_bytes = kept_shard.read_bytes()
    # drop one clip of the first shard and both of the last: those two shards are stale, the middle one is not
    narrowed = [ids[0], ids[2], *ids[3:6]]
    where = "clip_id IN (" + ", ".join(f"'{i}'" for i in narrowed) + ")"
    assert iv(c, "manifest", "select", "s1", "--where", where).exit_code == 0
    problems, _ = verify(c, "s1")
    assert any("not in subset 's1'" in p for p in problems), problems     # found before the re-shard

    res = iv(c, "data", "shard", "--subset", "s1", "--maxcount", "3")
    assert res.exit_code == 0 and "1 ok" in res.output and "'dropped_shards': 2" in res.output, res.output
    assert sorted(keys_in_index(c, "s1")) == sorted(narrowed)
    assert kept_shard.read_bytes() == kept_bytes                  # a shard that lost nothing is not rewritten
    assert sorted(p.name for p in c.shard_dir("s1").glob("*.tar")) == sorted(p.name for p in c.shard_list("s1"))
    with c.manifest(read_only=True) as m:
        assert sorted(r[0] for r in m.execute("SELECT key FROM samples WHERE shardset = 's1'").fetchall()) == \
            sorted(narrowed)
        assert m.scalar("SELECT sum(nsamples) FROM shards WHERE shardset = 's1'") == 5
    assert verify(c, "s1")[0] == []

    # a subset that shrinks to clips of the kept shard alone drops everything else, rewriting nothing
    assert iv(c, "manifest", "select", "s1", "--where", f"clip_id IN ('{ids[3]}', '{ids[4]}', '{ids[5]}')").exit_code == 0
    res = iv(c, "data", "shard", "--subset", "s1", "--maxcount", "3")
    assert res.exit_code == 0 and "0 ok" in res.output, res.output
    assert c.shard_list("s1") == [kept_shard] and sorted(keys_in_index(c, "s1")) == sorted(ids[3:6])
    assert verify(c, "s1")[0] == []


@pytest.mark.parametrize("killed_at", ["before dropping", "after the new index"])
def test_a_rewrite_killed_midway_is_finished_by_the_next_run(small_corpus, monkeypatch, killed_at):
    from ivdata.stages import shard as shard_stage
    c = small_corpus
    ids = clip_ids(c)
    with c.manifest() as m:
        m.select_subset("s", where="true")
    pipeline.shard(c, ShardConfig(subset="s", maxcount=3))
    old_index = c.wids_index("s").read_text()
    with c.manifest() as m:
        m.select_subset("s", where=f"clip_id <> '{ids[1]}'")

    class Killed(Exception):
        pass

    real_write_indexes = shard_stage.write_indexes

    def kill(*a, **kw):
        if killed_at == "after the new index":
            real_write_indexes(*a, **kw)
        raise Killed

    monkeypatch.setattr(shard_stage, "write_indexes", kill)
    with pytest.raises(Killed):
        pipeline.shard(c, ShardConfig(subset="s", maxcount=3))
    # whatever the kill left, the index on disk names whole shards that exist
    listed = json.loads(c.wids_index("s").read_text())["shardlist"]
    assert all((c.shard_dir("s") / e["url"]).stat().st_size == e["filesize"] for e in listed)
    if killed_at == "before dropping":
        assert c.wids_index("s").read_text() == old_index
    monkeypatch.setattr(shard_stage, "write_indexes", real_write_indexes)

    pipeline.shard(c, ShardConfig(subset="s", maxcount=3))
    assert sorted(keys_in_index(c, "s")) == sorted(set(ids) - {ids[1]})
    assert sorted(p.name for p in c.shard_dir("s").glob("*.tar")) == sorted(p.name for p in c.shard_list("s"))
    assert verify(c, "s")[0] == []


def test_shard_sets_made_before_the_shard_sets_table_learn_their_subset(small_corpus):
    """A manifest made before the shard_sets migration gets, on migration, the subset each shard set's last run
    named (the migrations after it apply again)."""
    c = small_corpus
    with c.manifest() as m:
        version = m.scalar("SELECT version FROM schema_version WHERE name = 'shard_sets'")
        m.execute("DROP TABLE shard_sets")
        m.execute("DELETE FROM schema_version WHERE version >= ?", [version])
    with Manifest(c.manifest_path) as m:
        assert m.rows("SELECT shardset, subset FROM shard_sets") == [{"shardset": "all", "subset": "all"}]


# ------------------------------------------------------------------------------------------- bad input
def test_shard_refuses_unknown_subsets_and_path_like_names_in_one_line(small_corpus):
    for args, message in [(("--subset", "nosuch"), "no subset named 'nosuch'"),
                          (("--shardset", "../../escape"), "shard set name '../../escape'"),
                          (("--shardset", "a b"), "shard set name 'a b'"),
                          (("--maxcount", "0"), "at least 1")]:
        res = iv(small_corpus, "data", "shard", *args)
        assert res.exit_code == 2, (args, res.output)
        assert res.output.startswith("error:") and message in res.output and len(res.output.splitlines()) == 1, \
            (args, res.output)
    assert not (small_corpus.shards_dir.parent / "escape").exists()
