"""Tasks for executor tests that count what happens in workers (importable by spawned and Ray worker processes)."""
from __future__ import annotations

import os

from ivdata.runtime.executor import Resources

SETUPS = 0            # per process: how often setup() ran in it
PICKLED = 0           # in the parent: how often a task was pickled to be shipped


class CountsSetups:
    """Its work reports its process, how often setup() ran in that process, and what setup() made."""

    name = "counts_setups"

    def __init__(self, payload_bytes: int = 0):
        self.payload = b"x" * payload_bytes       # stands for configuration that is costly to ship

    def __getstate__(self) -> dict:
        global PICKLED
        PICKLED += 1
        return {"payload": self.payload}

    def resources(self) -> Resources:
        return Resources(cpus=1)

    def setup(self) -> None:
        global SETUPS
        SETUPS += 1
        self._model = f"loaded in {os.getpid()}"

    def work(self, item: int) -> tuple[int, int, str]:
        return os.getpid(), SETUPS, self._model
