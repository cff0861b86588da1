"""Atomic file writes: write beside the target under a hidden temporary name, then rename.

A reader (or a rerun after a crash) sees either the whole file or none; temporary names carry the
writer's pid so parallel workers never collide, and start with '.' so globs for results skip them.
"""
from __future__ import annotations

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
