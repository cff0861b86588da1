"""The one small interface every data-engine stage shares.

A stage declares what manifest facts it needs and produces, checks that its configuration can work
at all (`check`, before the run is recorded or any item is touched), lists the work not yet recorded
(`pending`), does one item's work in a worker (`work`, a pure function of the item: no manifest
access), and records results as the single manifest writer (`record`). `run_stage` drives it:
results are committed in batches, so a killed run loses at most the uncommitted batch, and a
rerun picks up exactly the items whose results were not recorded.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar

from ivdata.corpus import Corpus
from ivdata.manifest import Manifest
from ivdata.runtime.executor import WorkFailed, map_unordered
from ivkit.progress import progress


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
    needs: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def config(self) -> dict:
        """What the runs table records about this run."""
        return {k: (asdict(v) if is_dataclass(v) else v) for k, v in vars(self).items()
                if k != "corpus" and not k.startswith("_")}

    def check(self, m: Manifest, retry_failed: bool) -> None:
        """Raise StageConfigError when this run cannot work as configured. Runs before anything is recorded."""

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


def run_stage(stage: Stage, workers: int = 0, retry_failed: bool = False, batch_size: int = 16,
              backend: str = "local") -> StageStats:
    stats = StageStats()
    t0 = time.perf_counter()
    with stage.corpus.manifest() as m:
        stage.check(m, retry_failed)
        run_id = m.start_run(stage.name, {**stage.config(), "workers": workers, "retry_failed": retry_failed})
        status = "failed"
        try:
            items = stage.pending(m, retry_failed)
            stats.pending = len(items)
            batch: list = []
            with progress(f"{stage.name}", len(items)) as advance:
                for item, result in map_unordered(stage.work, items, workers=workers, backend=backend):
                    batch.append((item, result))
                    advance()
                    if len(batch) >= batch_size:
                        _commit(stage, m, batch, stats)
                        batch = []
                _commit(stage, m, batch, stats)
            stage.finish(m, stats)
            status = "ok"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            stats.seconds = time.perf_counter() - t0
            m.finish_run(run_id, status, stats.as_counts())
    return stats


def _commit(stage: Stage, m: Manifest, batch: list, stats: StageStats) -> None:
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


def failed(result: Any) -> bool:
    return isinstance(result, WorkFailed)
