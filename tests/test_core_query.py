"""`iv manifest query` reads this corpus's manifest and nothing else, and writes nothing; --out is ivkit's."""
from __future__ import annotations

import hashlib
import json

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from ivdata.corpus import Corpus
from ivdata.manifest import Manifest, ManifestError

runner = CliRunner()


def query(corpus, sql: str, *extra: str):
    return runner.invoke(app, ["manifest", "query", sql, "-c", str(corpus.manifest_path), *extra])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_queries_cannot_write_the_manifest_a_shard_or_another_corpus(small_corpus, tmp_path):
    c = small_corpus
    other = Corpus.init("other", home=tmp_path / "other_home")
    shard = c.shard_list("all")[0]
    before = {p: digest(p) for p in (c.manifest_path, shard, other.manifest_path)}
    attacks = [f"COPY (SELECT 1) TO '{c.manifest_path}'",
               f"COPY (SELECT 1) TO '{shard}' (FORMAT csv)",
               f"ATTACH '{other.manifest_path}' AS o (READ_WRITE); DELETE FROM o.meta",
               f"ATTACH '{other.manifest_path}' AS o (READ_WRITE)",
               "DELETE FROM clips", "CREATE TEMP TABLE t AS SELECT 1",
               "SET enable_external_access = true", "SET lock_configuration = false",
               "LOAD httpfs", "INSTALL httpfs", f"EXPORT DATABASE '{tmp_path / 'exported'}'"]
    for sql in attacks:
        res = query(c, sql)
        assert res.exit_code == 2, (sql, res.output)
        assert "Traceback" not in res.output and res.output.startswith("error:"), (sql, res.output)
    assert {p: digest(p) for p in before} == before
    assert not (tmp_path / "exported").exists()
    with Manifest(other.manifest_path, read_only=True) as m:
        assert m.get_meta("name") == "other"
    res = runner.invoke(app, ["data", "verify", "-c", str(c.manifest_path)])
    assert res.exit_code == 0, res.output


def test_queries_cannot_read_files_or_list_folders(small_corpus, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    for sql in [f"SELECT * FROM read_text('{secret}')", f"SELECT * FROM read_csv('{secret}')",
                f"SELECT * FROM '{secret}'", "SELECT * FROM read_text('/etc/passwd')",
                f"SELECT * FROM glob('{tmp_path}/*')", f"SELECT * FROM read_blob('{secret}')",
                f"SELECT * FROM read_parquet('{tmp_path}/*.parquet')"]:
        res = query(small_corpus, sql)
        assert res.exit_code == 2, (sql, res.output)
        assert "hunter2" not in res.output and "root:x" not in res.output, (sql, res.output)
        assert "disabled" in res.output, (sql, res.output)


def test_one_select_per_query(small_corpus):
    res = query(small_corpus, "SELECT 1; SELECT 2")
    assert res.exit_code == 2 and "one statement" in res.output
    res = query(small_corpus, "SELECT x FROM [/]")        # quoted in the error: text, not console markup
    assert res.exit_code == 2 and "[/]" in res.output and "Traceback" not in res.output, res.output
    res = query(small_corpus, "SELECT count(*) AS n FROM clips;")     # a trailing semicolon is still one
    assert res.exit_code == 0 and " 8 " in res.output, res.output
    res = query(small_corpus, "DESCRIBE clips", "--limit", "100")
    assert res.exit_code == 0 and "clip_id" in res.output
    res = query(small_corpus, "EXPLAIN SELECT * FROM clips")
    assert res.exit_code == 0 and "SEQ_SCAN" in res.output.replace(" ", "_").upper()


def test_timestamptz_results_print_and_write(small_corpus, tmp_path):
    res = query(small_corpus, "SELECT now() AS t, clip_id FROM clips ORDER BY clip_id")
    assert res.exit_code == 0, res.output
    assert "+00:00" in res.output or "+00" in res.output
    for suffix in ("parquet", "csv", "json"):
        out = tmp_path / f"result.{suffix}"
        res = query(small_corpus, "SELECT now() AS t, clip_id, start_s FROM clips ORDER BY clip_id",
                    "--out", str(out))
        assert res.exit_code == 0, res.output
        if suffix == "parquet":
            table = pq.read_table(out)
            assert table.num_rows == 8 and str(table.schema.field("t").type).startswith("timestamp")
            assert table.schema.field("t").type.tz is not None
        elif suffix == "json":
            rows = json.loads(out.read_text())
            assert [r["start_s"] for r in rows] == sorted(r["start_s"] for r in rows) and len(rows) == 8
        else:
            assert out.read_text().splitlines()[0] == "t,clip_id,start_s"
        assert not list(tmp_path.glob(".*tmp*"))           # written under a temporary name, renamed


def test_out_is_refused_among_the_shards_and_for_unknown_suffixes(small_corpus, tmp_path):
    index = small_corpus.wids_index("all")
    before = index.read_text()
    res = query(small_corpus, "SELECT 1 AS x", "--out", str(index))
    assert res.exit_code == 2 and "shards" in res.output
    assert index.read_text() == before
    res = query(small_corpus, "SELECT 1 AS x", "--out", str(tmp_path / "x.duckdb"))
    assert res.exit_code == 2 and ".parquet, .csv or .json" in res.output


def test_internal_read_only_paths_keep_their_file_access(small_corpus, tmp_path):
    """Only user SQL is locked down: ivkit's own read-only work (Parquet export, reports) still writes files,
    and a locked connection and an ordinary one never share a database instance (so neither settings leak)."""
    c = small_corpus
    with Manifest(c.manifest_path, read_only=True) as m:
        files = m.export_parquet(tmp_path / "pq")
        with pytest.raises(ManifestError):
            Manifest.for_queries(c.manifest_path)
    assert {f.stem for f in files} >= {"clips", "shard_sets", "samples"}
    with Manifest.for_queries(c.manifest_path) as m:
        assert m.query("SELECT current_setting('enable_external_access') AS v").fetchall() == [(False,)]
        with pytest.raises(duckdb.Error):
            m.query(f"SELECT * FROM read_parquet('{tmp_path / 'pq' / 'clips.parquet'}')").fetchall()
    res = runner.invoke(app, ["manifest", "export", "-c", str(c.manifest_path), "--out", str(tmp_path / "pq2")])
    assert res.exit_code == 0 and (tmp_path / "pq2" / "clips.parquet").exists()
    res = runner.invoke(app, ["corpus", "report", "-c", str(c.manifest_path), "--out", str(tmp_path / "report")])
    assert res.exit_code == 0 and (tmp_path / "report" / "index.html").exists(), res.output
    res = runner.invoke(app, ["corpus", "info", "-c", str(c.manifest_path)])
    assert res.exit_code == 0 and "all" in res.output


def test_subset_sql_is_one_select(small_corpus):
    with small_corpus.manifest() as m:
        with pytest.raises(ManifestError, match="one statement"):
            m.select_subset("x", where="true); DELETE FROM clips; SELECT 1 WHERE (true")
        with pytest.raises(ManifestError, match="read-only"):
            m.select_subset("x", sql="DELETE FROM clips RETURNING clip_id")
        assert m.scalar("SELECT count(*) FROM clips") == 8
