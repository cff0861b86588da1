"""Manifest: schema versioning, read-only queries, subsets, exports."""
from __future__ import annotations

import json

import duckdb
import pytest

from ivdata.manifest import SCHEMA_VERSION, Manifest, ManifestError


def test_new_manifest_is_migrated_and_readable_by_older_duckdb_storage(tmp_path):
    p = tmp_path / "m.duckdb"
    with Manifest(p, create=True) as m:
        assert m.schema_version() == SCHEMA_VERSION >= 1
        assert {"videos", "clips", "captions", "scores", "dedup", "subsets", "shards", "samples", "runs"} <= set(m.tables())
        assert m.migrate() == []  # idempotent
    con = duckdb.connect(str(p), read_only=True)
    # written with storage_compatibility_version so DuckDB 1.2+ readers (e.g. duckdb-cli) can open it
    assert con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


def test_read_only_manifest_refuses_writes(tmp_path):
    p = tmp_path / "m.duckdb"
    Manifest(p, create=True).close()
    with Manifest(p, read_only=True) as m:
        with pytest.raises(duckdb.Error):
            m.execute("INSERT INTO meta VALUES ('x', 'y')")


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        Manifest(tmp_path / "nope.duckdb", read_only=True)


def test_subset_select_where_and_sql(built_corpus):
    with built_corpus.manifest() as m:
        total = m.scalar("SELECT count(*) FROM clips WHERE status = 'ok'")
        n_audio = m.select_subset("with_audio", where="has_audio")
        assert 0 < n_audio < total
        assert set(m.subset_clip_ids("with_audio")) == {r[0] for r in m.execute(
            "SELECT clip_id FROM clips WHERE status='ok' AND has_audio").fetchall()}
        n = m.select_subset("bikes", sql="SELECT clip_id FROM clip_info WHERE uri LIKE '%bikes.mp4'")
        assert n == 3  # of its 6 shots, 3 last at least 2 s
        n2 = m.select_subset("bikes", where="uri LIKE '%bigbuckbunny%'")  # replace, not append
        assert n2 == m.scalar("SELECT nclips FROM subset_defs WHERE name = 'bikes'") == 1
        with pytest.raises(ManifestError, match="subset query failed"):
            m.select_subset("bad", where="no_such_column = 1")
        with pytest.raises(ManifestError):
            m.select_subset("bad name", where="true")


def test_export_parquet_roundtrip(built_corpus, tmp_path):
    with built_corpus.manifest(read_only=True) as m:
        files = m.export_parquet(tmp_path / "pq")
        nclips = m.scalar("SELECT count(*) FROM clips")
    names = {f.stem for f in files}
    assert {"videos", "clips", "shards", "samples", "runs"} <= names
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM '{tmp_path / 'pq' / 'clips.parquet'}'").fetchone()[0] == nclips


def test_runs_table_records_each_stage_with_throughput(built_corpus):
    with built_corpus.manifest(read_only=True) as m:
        runs = m.rows("SELECT stage, status, counts FROM runs ORDER BY run_id")
    assert [r["stage"] for r in runs] == ["ingest", "probe", "images", "split", "cut", "shard"]
    assert all(r["status"] == "ok" for r in runs)
    cut = json.loads(runs[4]["counts"])
    assert cut["ok"] > 0 and cut["media_s_per_s"] > 0


def test_old_manifest_is_migrated_in_place_and_keeps_its_data(tmp_path):
    from ivdata.manifest.db import _migrations
    p = tmp_path / "old.duckdb"
    con = duckdb.connect(str(p))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)")
    con.execute(_migrations()[0][2])                      # a file written by schema version 1
    con.execute("INSERT INTO schema_version VALUES (1, 'core', now())")
    con.execute("INSERT INTO videos (video_id, source, uri, status) VALUES ('v1', 'x', '/a.mp4', 'ingested')")
    con.close()
    if SCHEMA_VERSION > 1:
        with pytest.raises(ManifestError, match="iv manifest migrate"):
            Manifest(p, read_only=True)
    with Manifest(p) as m:                                 # a writer migrates
        assert m.schema_version() == SCHEMA_VERSION
        assert m.rows("SELECT video_id, status FROM videos") == [{"video_id": "v1", "status": "ingested"}]
    with Manifest(p, read_only=True) as m:
        assert m.schema_version() == SCHEMA_VERSION
