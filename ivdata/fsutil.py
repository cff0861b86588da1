"""Files: atomic writes, content hashes, and whether a file is still the one a manifest recorded.

Atomic writes go beside the target under a hidden temporary name, then rename: a reader (or a rerun
after a crash) sees either the whole file or none; temporary names carry the writer's pid so parallel
workers never collide, and start with '.' so globs for results skip them.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def temp_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = temp_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def hash_file(path: str | Path) -> tuple[str, int]:
    """(sha256 hex digest, bytes read)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def stamp(path: str | Path) -> tuple[int, int]:
    """(size, mtime in ns): what changes, in practice, whenever a file's content does."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _sha256_at(path: str, size: int, mtime_ns: int) -> str:
    # keyed by the stamp, so the many clips of one touched-but-unchanged video hash it once per process
    return hash_file(path)[0]


def changed_since(path: str | Path, nbytes: int | None, mtime_ns: int | None, sha256: str | None) -> str | None:
    """Why the file at `path` is no longer the one recorded, or None when it still is. Size first (free),
    then, when the mtime moved or was never recorded, the sha256 (a touched file with the same bytes is
    the same file)."""
    try:
        size, mtime = stamp(path)
    except FileNotFoundError:
        return "the file is gone"
    if nbytes is not None and size != nbytes:
        return f"{nbytes} bytes recorded, {size} now"
    if (mtime_ns is not None and mtime == mtime_ns) or sha256 is None:
        return None
    now = _sha256_at(str(path), size, mtime)
    return None if now == sha256 else f"sha256 {sha256[:12]}... recorded, {now[:12]}... now"
