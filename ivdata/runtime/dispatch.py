"""What the local pool and the Ray executor share: how items are handed out and what a dead worker costs.

- Items go out in chunks sized to about `TARGET_CHUNK_S` of work, from the measured seconds per item (the first
  chunk is one item). Cheap items (hashing a small file) go by the hundred, so the messages cost little next
  to the work; slow ones (a clip to re-encode) one at a time, so no worker idles while another holds a queue.
- A worker holds at most `DEPTH` chunks (one running, one waiting), so the items in flight are bounded by
  workers x DEPTH x MAX_CHUNK whatever the number of items: memory stays flat and the writer sets the pace.
- A worker that dies (a decoder segfault, the OOM killer, a lost node) was running the first chunk it held;
  the chunks waiting behind it go out again as they were. Each item of the running chunk runs again alone;
  an item whose worker dies again while it runs alone is the cause, and fails with CRASHED. So a crash costs
  one item, as it would inline, and never the stage.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterable, Iterator

from ivdata.runtime.executor import WorkFailed

TARGET_CHUNK_S = 0.05
MAX_CHUNK = 512
DEPTH = 2
CRASHED = "worker process crashed on this item (e.g. a decoder segfault)"


@dataclass
class Chunk:
    items: list
    alone: bool = False        # an item rerun by itself after its worker died: dying again makes it the cause


class Dispatch:
    def __init__(self, items: Iterable[Any], target_s: float = TARGET_CHUNK_S, max_chunk: int = MAX_CHUNK):
        self._items = iter(items)
        self._again: deque[Chunk] = deque()
        self._per_item_s: float | None = None
        self.target_s, self.max_chunk = target_s, max_chunk

    def chunk_size(self) -> int:
        if self._per_item_s is None:
            return 1
        return max(1, min(self.max_chunk, int(self.target_s / max(self._per_item_s, 1e-7))))

    def take(self) -> Chunk | None:
        """The next chunk to send, or None when every item has been handed out."""
        if self._again:
            return self._again.popleft()
        items = list(islice(self._items, self.chunk_size()))
        return Chunk(items) if items else None

    def put_back(self, chunk: Chunk) -> None:
        """A chunk that could not be sent (its worker was gone): it goes out first, unchanged."""
        self._again.appendleft(chunk)

    def done(self, chunk: Chunk, outcomes: list[tuple[bool, Any]], seconds: float) -> Iterator[tuple[Any, Any]]:
        per_item = seconds / max(len(chunk.items), 1)
        self._per_item_s = per_item if self._per_item_s is None else 0.7 * self._per_item_s + 0.3 * per_item
        for item, (ok, res) in zip(chunk.items, outcomes):
            yield item, res if ok else WorkFailed(res)

    def lost(self, held: list[Chunk]) -> Iterator[tuple[Any, WorkFailed]]:
        """A worker died holding these chunks (in the order it got them): the first was running."""
        for i, chunk in enumerate(held):
            if i > 0:
                self._again.append(chunk)
            elif chunk.alone:
                yield chunk.items[0], WorkFailed(CRASHED)
            else:
                self._again.extend(Chunk([x], alone=True) for x in chunk.items)
