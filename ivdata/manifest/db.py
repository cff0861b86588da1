"""The DuckDB manifest: open (read-write or read-only), migrate, query, subsets, export.

Only one process writes a manifest (DuckDB enforces it with a file lock); stages run their
parallel work in workers and hand results back to the single writer. SQL from users runs on a
connection opened by `Manifest.for_queries`: read-only, one SELECT at a time, with file access and
extensions switched off and the configuration locked, so a query reads this manifest and nothing else
and writes nothing (not the manifest, not a shard, not another corpus).
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb

# Files written by this version stay readable by DuckDB >= 1.2 (e.g. the pip duckdb-cli).
STORAGE_COMPATIBILITY = "v1.2.0"
SUBSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# What a user's query may do: read. EXPLAIN plans (or, with ANALYZE, runs) a SELECT; DESCRIBE, SHOW and
# SUMMARIZE parse as SELECT. COPY, ATTACH, SET, LOAD, INSTALL, PRAGMA, CALL, EXPORT and writes are refused.
QUERY_STATEMENTS = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)
# The connection a user's query runs on: no file, URL or database but the manifest it opened, no extension
# loaded or installed, and none of this can be set back (lock_configuration).
LOCKED_CONFIG = {"enable_external_access": False, "autoload_known_extensions": False,
                 "autoinstall_known_extensions": False, "allow_community_extensions": False,
                 "lock_configuration": True}


class ManifestError(RuntimeError):
    pass


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped with ivkit, in order."""
    found = []
    for entry in resources.files("ivdata.manifest").joinpath("migrations").iterdir():
        m = re.match(r"^(\d+)_(.+)\.sql$", entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise ManifestError(f"migrations must be numbered 1..n without gaps, found {[v for v, _, _ in found]}")
    return found


SCHEMA_VERSION = len(_migrations())


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Manifest:
    """A corpus manifest. Use as a context manager: `read_only=True` for ivkit's own reading, `for_queries`
    for SQL a user wrote."""

    def __init__(self, path: str | Path, read_only: bool = False, create: bool = False, check_version: bool = True,
                 locked: bool = False):
        """locked: read-only, with LOCKED_CONFIG (see `for_queries`)."""
        self.path = Path(path)
        self.read_only = read_only
        if not self.path.exists() and not create:
            raise ManifestError(f"no manifest at {self.path} (create one with `iv corpus init`)")
        if create and read_only:
            raise ManifestError("cannot create a manifest read-only")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if locked and not read_only:
            raise ManifestError("a locked manifest is read-only")
        config = {} if (read_only or self.path.exists()) else {"storage_compatibility_version": STORAGE_COMPATIBILITY}
        if locked:
            config = dict(LOCKED_CONFIG)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as e:       # IOException: lock held; ConnectionException: open with other settings
            if "Could not set lock" in str(e):
                holder = re.search(r"PID \d+", str(e))
                raise ManifestError(
                    f"{self.path} is in use by another process{f' ({holder.group(0)})' if holder else ''}: one "
                    "process writes a manifest at a time, and readers wait for the writer; retry when it "
                    "has finished") from None
            raise ManifestError(f"cannot open {self.path}: {e}") from e
        if not read_only:
            self.migrate()
        elif check_version and self.schema_version() != SCHEMA_VERSION:
            raise ManifestError(
                f"{self.path} has schema version {self.schema_version()}, this ivkit expects {SCHEMA_VERSION}: "
                "run `iv manifest migrate`")

    @classmethod
    def for_queries(cls, path: str | Path) -> "Manifest":
        """A read-only manifest for SQL a user wrote (run it with `query`): the connection can read this
        manifest's tables and nothing else, and cannot switch that off again (LOCKED_CONFIG). DuckDB gives it a
        database instance of its own: it refuses to share one between connections of different settings, so
        the lock never reaches, nor is undone by, another connection of this process."""
        return cls(path, read_only=True, locked=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        if self.con is not None:
            if not self.read_only:
                self.con.execute("CHECKPOINT")
            self.con.close()
            self.con = None

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def schema_version(self) -> int:
        has = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'").fetchone()[0]
        if not has:
            return 0
        row = self.con.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> list[int]:
        """Apply every migration newer than the file's version, each in its own transaction."""
        self.con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)")
        current = self.schema_version()
        applied = []
        for version, name, sql in _migrations():
            if version <= current:
                continue
            self.con.execute("BEGIN TRANSACTION")
            try:
                self.con.execute(sql)
                self.con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, name, utcnow()])
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
            applied.append(version)
        return applied

    # -- key/value meta -------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    # -- queries ---------------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None):
        return self.con.execute(sql, params or [])

    def relation(self, sql: str) -> duckdb.DuckDBPyRelation:
        """A query as a relation that streams its rows (`to_arrow_reader`), on a cursor of its own: DuckDB refuses
        to stream on a connection whose last execute() result was not read to the end (a fetchone)."""
        return self.con.cursor().sql(sql)

    def query(self, sql: str) -> duckdb.DuckDBPyRelation:
        """One user-written read-only statement (see QUERY_STATEMENTS), as a streaming relation."""
        check_query(sql)
        return self.relation(sql)

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[dict]:
        cur = self.con.execute(sql, params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] | None = None):
        row = self.con.execute(sql, params or []).fetchone()
        return row[0] if row else None

    def insert_rows(self, table: str, rows: Iterable[dict], mode: str = "INSERT OR REPLACE") -> int:
        """Insert dict rows (all with the same keys) in one statement through Arrow."""
        rows = list(rows)
        if not rows:
            return 0
        import pyarrow as pa
        cols = list(rows[0].keys())
        data = pa.Table.from_pylist(rows)
        self.con.register("_ivkit_rows", data)
        try:
            self.con.execute(f"{mode} INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _ivkit_rows")
        except Exception:
            # inside a transaction the failed INSERT aborts it, and unregistering then raises "transaction is
            # aborted", which would hide the real error (a key conflict, say); the next register replaces the view
            try:
                self.con.unregister("_ivkit_rows")
            except duckdb.Error:
                pass
            raise
        self.con.unregister("_ivkit_rows")
        return len(rows)

    def update_rows(self, table: str, key: str | Sequence[str], rows: Iterable[dict]) -> int:
        """UPDATE table SET ... for each row, matched on key column(s); one statement per batch."""
        rows = list(rows)
        if not rows:
            return 0
        import pyarrow as pa
        keys = [key] if isinstance(key, str) else list(key)
        cols = [c for c in rows[0] if c not in keys]
        self.con.register("_ivkit_upd", pa.Table.from_pylist(rows))
        try:
            sets = ", ".join(f"{c} = u.{c}" for c in cols)
            on = " AND ".join(f"{table}.{k} = u.{k}" for k in keys)
            self.con.execute(f"UPDATE {table} SET {sets} FROM _ivkit_upd u WHERE {on}")
        finally:
            self.con.unregister("_ivkit_upd")
        return len(rows)

    # -- subsets ---------------------------------------------------------------------------------
    def select_subset(self, name: str, where: str | None = None, sql: str | None = None) -> int:
        """Create or replace the named subset from a WHERE over `clip_info` or a full SELECT of clip_ids."""
        if not SUBSET_NAME.match(name):
            raise ManifestError(f"subset name {name!r}: use letters, digits, '_' and '-'")
        if (where is None) == (sql is None):
            raise ManifestError("give exactly one of --where or --sql")
        query = sql if sql is not None else f"SELECT clip_id FROM clip_info WHERE status = 'ok' AND ({where})"
        check_query(query, (duckdb.StatementType.SELECT,), what="subset query")
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute("DELETE FROM subsets WHERE name = ?", [name])
            try:
                self.con.execute(
                    f"INSERT INTO subsets SELECT DISTINCT ?, q.clip_id FROM ({query}) q "
                    "WHERE q.clip_id IN (SELECT clip_id FROM clips)", [name])
            except duckdb.Error as e:
                raise ManifestError(f"subset query failed: {e}") from e
            n = self.scalar("SELECT count(*) FROM subsets WHERE name = ?", [name])
            self.con.execute("INSERT OR REPLACE INTO subset_defs VALUES (?, ?, ?, ?)", [name, query, n, utcnow()])
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise
        return int(n)

    def subset_clip_ids(self, name: str) -> list[str]:
        if name == "all":
            return [r[0] for r in self.con.execute(
                "SELECT clip_id FROM clips WHERE status = 'ok' ORDER BY clip_id").fetchall()]
        if not self.scalar("SELECT count(*) FROM subset_defs WHERE name = ?", [name]):
            raise ManifestError(f"no subset named {name!r} (make one with `iv manifest select`)")
        return [r[0] for r in self.con.execute(
            "SELECT s.clip_id FROM subsets s JOIN clips c USING (clip_id) WHERE s.name = ? AND c.status = 'ok' "
            "ORDER BY s.clip_id", [name]).fetchall()]

    def subset_sample_keys(self, name: str, unit: str = "clips") -> list[str]:
        """The sample keys a shard set of the subset holds: its clip ids, or (unit 'conversations') the ids of
        the imported conversations linked to its clips."""
        clips = self.subset_clip_ids(name)
        if unit == "clips":
            return clips
        if unit != "conversations":
            raise ManifestError(f"sample unit {unit!r}: clips or conversations")
        return [r[0] for r in self.con.execute(
            "SELECT conversation_id FROM conversations WHERE status = 'ok' AND clip_id IN "
            "(SELECT unnest(?::VARCHAR[])) ORDER BY conversation_id", [clips]).fetchall()]

    # -- runs ------------------------------------------------------------------------------------
    def start_run(self, stage: str, config: dict) -> int:
        # Only one process writes: a run still 'running' now was killed before it could say so.
        self.con.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
        return int(self.con.execute(
            "INSERT INTO runs (stage, config, started, status) VALUES (?, ?, ?, 'running') RETURNING run_id",
            [stage, json.dumps(config, default=str), utcnow()]).fetchone()[0])

    def finish_run(self, run_id: int, status: str, counts: dict) -> None:
        self.con.execute("UPDATE runs SET finished = ?, status = ?, counts = ? WHERE run_id = ?",
                         [utcnow(), status, json.dumps(counts, default=str), run_id])

    # -- export ----------------------------------------------------------------------------------
    def tables(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()]

    def export_parquet(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for t in self.tables():
            p = out / f"{t}.parquet"
            self.con.execute(f"COPY (SELECT * FROM {t}) TO '{_sql_str(p)}' (FORMAT parquet)")
            written.append(p)
        return written


def check_query(sql: str, allowed=QUERY_STATEMENTS, what: str = "query") -> None:
    """One statement of an allowed kind, or a ManifestError that says what was found."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise ManifestError(f"{what} failed: {e}") from None
    if len(statements) != 1:
        raise ManifestError(f"a {what} is one statement; found {len(statements)}")
    kind = statements[0].type
    if kind not in allowed:
        raise ManifestError(f"a {what} is read-only ({' or '.join(k.name for k in allowed)}), not {kind.name}")


def _sql_str(p: Path | str) -> str:
    return str(p).replace("'", "''")


OUT_FORMATS = {".parquet": "FORMAT parquet", ".csv": "FORMAT csv", ".json": "FORMAT json, ARRAY true"}


def write_query_result(result: duckdb.DuckDBPyRelation, out: Path, batch_rows: int = 65536) -> None:
    """Write a query's result (from `Manifest.query`) to .parquet / .csv / .json, by suffix.

    The result streams out of the locked-down query connection as Arrow batches; ivkit's own in-memory
    DuckDB writes them (the user's SQL never runs there), to a temporary name renamed when whole.
    """
    opts = OUT_FORMATS.get(out.suffix.lower())
    if opts is None:
        raise ManifestError(f"--out must end in .parquet, .csv or .json, not {out.suffix!r}")
    from ivdata.fsutil import temp_name
    reader = result.to_arrow_reader(batch_rows)
    tmp = temp_name(out)
    writer = duckdb.connect()
    try:
        writer.register("result", reader)
        writer.execute(f"COPY (SELECT * FROM result) TO '{_sql_str(tmp)}' ({opts})")
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
