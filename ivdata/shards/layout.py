"""A shard set's layout (the members and json keys all its samples share) and the hash each shard records."""
from __future__ import annotations

import hashlib


def layout_hash(layout_json: str) -> str:
    """The tag of a layout (as `shard_sets.layout` stores it: JSON with sorted keys) on every shard written in it."""
    return hashlib.sha256(layout_json.encode()).hexdigest()[:16]
