"""Rich progress bars for long work (quiet when not attached to a terminal and IVKIT_PROGRESS=0)."""
from __future__ import annotations

import os
from contextlib import contextmanager

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Throughput, e.g. `3.2 clips/s`."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else f"- {self.unit}/s")


@contextmanager
def progress(description: str, total: int, unit: str | None = None):
    """unit: also show the throughput in these units per second."""
    disable = os.environ.get("IVKIT_PROGRESS", "1") == "0"
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [RateColumn(unit)] if unit else []
    with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), disable=disable, transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)
