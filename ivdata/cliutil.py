"""What every `iv` command module shares: the console, common options, error exits, stage summaries."""
from __future__ import annotations

from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

console = Console(soft_wrap=True)

CorpusOpt = typer.Option("default", "--corpus", "-c", envvar="IVKIT_CORPUS",
                         help="Corpus name (manifests/NAME.duckdb under $IVKIT_HOME) or a .duckdb path.")
WorkersOpt = typer.Option(0, "--workers", "-j", help="Parallel workers: local processes (0: run inline), or with "
                          "--executor ray, Ray actors (0: as many as the cluster holds).")
ExecutorOpt = typer.Option("local", "--executor", help="Where per-item work runs: local (this host) | ray (a Ray "
                           "cluster; nodes must see the corpus at the same paths).")
RayAddressOpt = typer.Option(None, "--ray-address", help="Ray cluster HOST:PORT or ray://HOST:PORT (default: "
                             "$RAY_ADDRESS, else a Ray instance of this command's own).")
RetryOpt = typer.Option(False, "--retry-failed", help="Also redo items whose failure is recorded.")

_SUMMARY_KEYS = ("ok", "failed", "skipped", "pending", "seconds", "media_seconds", "items_per_s", "media_s_per_s")


def fail(msg: str) -> None:
    console.print(f"[red]error:[/] {escape(msg)}")    # messages quote user input: brackets are text, not markup
    raise typer.Exit(2)


@contextmanager
def refusals():
    """A stage that refuses to start (a configuration that cannot work, options that clash with what is
    recorded) ends the command with its one-line reason and exit status 2; nothing was recorded."""
    from ivdata.stages.base import StageConfigError
    try:
        yield
    except StageConfigError as e:
        fail(str(e))


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(msg)}")


class CliGroup(TyperGroup):
    """The `iv` app's root group: a ManifestError raised by any command under it (a missing subset, a manifest
    another process is writing, ...) says what is wrong in one line and exits with code 2, without a traceback.
    ManifestError is the data engine's error for what the user can fix, as are ExecutorError (an unreachable Ray
    cluster, a worker no node can hold) and WorkerSetupError (models that do not load in a worker); anything else
    is a bug and shows one."""

    def invoke(self, ctx):
        from ivdata.manifest import ManifestError
        from ivdata.runtime.executor import ExecutorError, WorkerSetupError
        try:
            return super().invoke(ctx)
        except (ManifestError, ExecutorError, WorkerSetupError) as e:
            fail(str(e))


def run_on(executor: str, workers: int, ray_address: str | None):
    """The Executor the --executor / --workers / --ray-address options name (an ExecutorError is one line)."""
    from ivdata.runtime.executor import Executor
    return Executor(executor, workers, ray_address)


def open_corpus(name: str):
    from ivdata.corpus import Corpus
    from ivdata.manifest import ManifestError
    try:
        return Corpus.open(name)
    except ManifestError as e:
        fail(str(e))


def report_stats(stage: str, stats) -> None:
    c = stats.as_counts()
    rate = f", {c['items_per_s']} items/s" if c.get("items_per_s") else ""
    extra = {k: v for k, v in c.items() if k not in _SUMMARY_KEYS}
    console.print(f"[bold]{stage}[/]: {stats.ok} ok, {stats.failed} failed, {stats.skipped} skipped "
                  f"in {stats.seconds:.1f} s{rate}" + (f" {extra}" if extra else ""))
