"""Rich progress bars for long work (quiet when not attached to a terminal and IVKIT_PROGRESS=0)."""
from __future__ import annotations

import os
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def progress(description: str, total: int):
    disable = os.environ.get("IVKIT_PROGRESS", "1") == "0"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=disable, transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)
