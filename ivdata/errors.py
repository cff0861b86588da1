"""Errors that cross the data engine's layers.

`ItemFault` is an item's own fault (a file that does not decode, a source that changed since ingest): the
manifest records its message as the reason, with no exception name in front. The media code raises it
(`ivdata.media.probe.MediaError`); the runtime only needs to know this class, not the media code.
"""
from __future__ import annotations


class ItemFault(RuntimeError):
    """An item that cannot be done, with a reason fit for the manifest's `error` column."""
