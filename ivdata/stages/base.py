"""The one small interface every data-engine stage shares, and `run_stage`, which drives it.

A stage
- declares the manifest facts it reads (`needs`) and writes (`produces`) as table or table.column names; the
  runner checks that they name real tables and columns, and that `record` and `finish` write only to what the
  stage produces (`WriteGuard`);
- says what one worker holds (`resources`: CPUs, GPUs, memory; annotation and scoring ask for a GPU when their
  models run on one) and loads what its work needs once per worker (`setup`: models), which `work` then uses;
- refuses a configuration that cannot work at all (`check`, before the run is recorded or any item touched);
- removes what a killed run left behind (`cleanup`: files no manifest row names), then lists the work whose result
  is not recorded (`pending`, which changes no file);
- does one item's work in a worker (`work`, a pure function of the item: no manifest access);
- records results as the single manifest writer (`record`, in batches, each one transaction; `committed` after
  each commit; `finish` once at the end).

What goes to a worker: the stage, once per worker (ivdata/runtime). Its public attributes are its configuration
and travel with it; attributes whose name starts with an underscore are the writer's bookkeeping (the rows of a
list being ingested, the layout of a shard set) or what `setup` loaded in a worker, and never travel.

`run_stage` commits a batch once it holds `batch_size` items (the stage's own, unless the caller gives one) or
`COMMIT_EVERY_S` seconds have passed since the last commit with something done: a killed run loses at most that
uncommitted batch, and a rerun picks up exactly the items whose results were not recorded. A commit costs tens of
milliseconds here, so stages of cheap items (ingest's rows) use large batches; slow items still commit every few
seconds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

from ivdata.corpus import Corpus
from ivdata.manifest import Manifest
from ivdata.runtime.executor import Executor, Resources, WorkFailed
from ivkit.progress import progress

COMMIT_EVERY_S = 2.0


class StageConfigError(ValueError):
    """A run that cannot work as configured (a detector that does not load, a scoring head of the wrong
    size, cut options that clash with what is recorded): refused up front, so no item is recorded as
    failed for a fault that is not the item's."""


@dataclass
class StageStats:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    seconds: float = 0.0
    media_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_counts(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        done = self.ok + self.failed
        d["items_per_s"] = round(done / self.seconds, 3) if self.seconds else None
        d["media_s_per_s"] = round(self.media_seconds / self.seconds, 3) if self.seconds else None
        return d


class Stage:
    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()        # "table" or "table.column"
    produces: ClassVar[tuple[str, ...]] = ()     # "table" (new rows) or "table.column" (values set on rows)
    batch_size: ClassVar[int] = 16               # items per manifest commit (at most COMMIT_EVERY_S apart)

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def __getstate__(self) -> dict:
        """What travels to a worker: the configuration, not the writer's bookkeeping nor loaded models."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def config(self) -> dict:
        """What the runs table records about this run."""
        return {k: (asdict(v) if is_dataclass(v) else v) for k, v in vars(self).items()
                if k != "corpus" and not k.startswith("_")}

    def resources(self) -> Resources:
        """What one worker holds while it runs this stage."""
        return Resources()

    def setup(self) -> None:
        """Load what `work` needs (models), once per worker, in that worker. Store it in underscore attributes."""

    def check(self, m: Manifest, retry_failed: bool) -> None:
        """Raise StageConfigError when this run cannot work as configured. Runs before anything is recorded."""

    def cleanup(self, m: Manifest) -> None:
        """Remove what a killed run left behind (files no manifest row names). Runs before `pending`."""

    def pending(self, m: Manifest, retry_failed: bool) -> list[Any]:
        raise NotImplementedError

    def work(self, item: Any) -> Any:
        raise NotImplementedError

    def record(self, m: Manifest, done: list[tuple[Any, Any]], stats: StageStats) -> None:
        """Write a batch of (item, result | WorkFailed) to the manifest; runs inside one transaction."""
        raise NotImplementedError

    def committed(self, batch: list[tuple[Any, Any]]) -> None:
        """Called after a batch's transaction has committed (e.g. to drop a journal the records supersede)."""

    def finish(self, m: Manifest, stats: StageStats) -> None:
        """Called once after every batch is recorded (e.g. to write an index)."""


class DeclarationError(RuntimeError):
    """A stage names a table or column the manifest does not have, or writes one it does not declare: a fault in
    the stage's code, not in the user's input."""


def schema(m: Manifest) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for table, column in m.execute("SELECT table_name, column_name FROM information_schema.columns "
                                   "WHERE table_schema = 'main'").fetchall():
        out.setdefault(table, set()).add(column)
    return out


def check_declarations(stage: Stage, m: Manifest) -> None:
    tables = schema(m)
    for kind, names in (("needs", stage.needs), ("produces", stage.produces)):
        for name in names:
            table, _, column = name.partition(".")
            if table not in tables or (column and column not in tables[table]):
                raise DeclarationError(f"stage {stage.name} {kind} {name!r}, which the manifest does not have")


class WriteGuard:
    """The manifest as `record` and `finish` see it: rows may be inserted only into tables the stage produces, and
    values set only in columns it produces (or tables it produces whole)."""

    def __init__(self, m: Manifest, stage: Stage):
        self._m, self._stage = m, stage
        self._tables = {p for p in stage.produces if "." not in p}
        self._columns = {tuple(p.split(".", 1)) for p in stage.produces if "." in p}

    def __getattr__(self, name: str):
        return getattr(self._m, name)

    def _refuse(self, what: str) -> None:
        raise DeclarationError(f"stage {self._stage.name} writes {what}, which it does not declare in `produces`")

    def insert_rows(self, table: str, rows, mode: str = "INSERT OR REPLACE") -> int:
        if table not in self._tables:
            self._refuse(f"rows of {table}")
        return self._m.insert_rows(table, rows, mode)

    def update_rows(self, table: str, key, rows) -> int:
        rows = list(rows)
        keys = {key} if isinstance(key, str) else set(key)
        if rows and table not in self._tables:
            undeclared = sorted(c for c in rows[0] if c not in keys and (table, c) not in self._columns)
            if undeclared:
                self._refuse(f"{table}.{', '.join(undeclared)}")
        return self._m.update_rows(table, key, rows)

    def select_subset(self, name: str, where: str | None = None, sql: str | None = None) -> int:
        if "subsets" not in self._tables:
            self._refuse("a subset")
        return self._m.select_subset(name, where=where, sql=sql)


def run_stage(stage: Stage, workers: int | Executor = 0, retry_failed: bool = False, batch_size: int | None = None
              ) -> StageStats:
    """Run a stage where `workers` says: a number of local processes (0: inline), or an Executor (local or Ray)."""
    executor = Executor.of(workers)
    batch_size = batch_size or stage.batch_size
    stats = StageStats()
    t0 = time.perf_counter()
    with stage.corpus.manifest() as m:
        check_declarations(stage, m)
        stage.check(m, retry_failed)
        with executor.session(stage) as session:    # an unreachable cluster, a worker no node holds: nothing recorded
            run_id = m.start_run(stage.name, {**stage.config(), **executor.config(), "retry_failed": retry_failed})
            status = "failed"
            guard = WriteGuard(m, stage)
            try:
                stage.cleanup(m)
                items = stage.pending(m, retry_failed)
                stats.pending = len(items)
                batch: list = []
                last_commit = time.perf_counter()
                with progress(f"{stage.name}", len(items)) as advance:
                    for item, result in session.map(items):
                        batch.append((item, result))
                        advance()
                        if len(batch) >= batch_size or time.perf_counter() - last_commit >= COMMIT_EVERY_S:
                            _commit(stage, guard, batch, stats)
                            batch, last_commit = [], time.perf_counter()
                    _commit(stage, guard, batch, stats)
                stage.finish(guard, stats)
                status = "ok"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                stats.seconds = time.perf_counter() - t0
                if executor.kind == "ray" or executor.workers:
                    stats.extra.update(session.counts.as_dict())
                m.finish_run(run_id, status, stats.as_counts())
    return stats


def _commit(stage: Stage, m: WriteGuard, batch: list, stats: StageStats) -> None:
    if not batch:
        return
    m.execute("BEGIN TRANSACTION")
    try:
        stage.record(m, batch, stats)
        m.execute("COMMIT")
    except Exception:
        m.execute("ROLLBACK")
        raise
    stage.committed(batch)


def model_memory_mb(paths: list[str]) -> int:
    """About what a worker's models take in memory: the size of their local files (a model loads its weights
    whole). Paths that are not local files (a served model's name) count nothing; 0 asks for no reservation."""
    total = 0
    for p in map(Path, paths):
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return -(-total // 2**20)


def failed(result: Any) -> bool:
    return isinstance(result, WorkFailed)
