"""Annotation-file readers, one per dataset format; `read_source(format, path)` picks one by name."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ivdata.curate.sources.activitynet import read_activitynet
from ivdata.curate.sources.base import (ResolveReport, SourceFormatError, VideoIndex, resolve_paths,
                                        source_key)
from ivdata.curate.sources.hacs import read_hacs
from ivdata.curate.sources.kinetics import read_kinetics
from ivdata.curate.sources.mit import read_mit
from ivdata.curate.sources.ssv2 import read_ssv2
from ivdata.curate.sources.videolist import read_videolist

READERS: dict[str, Callable[..., list[dict]]] = {
    "kinetics": read_kinetics,
    "ssv2": read_ssv2,
    "mit": read_mit,
    "activitynet": read_activitynet,
    "hacs": read_hacs,
    "videolist": read_videolist,
}
# The dataset name each format's rows carry unless a recipe says otherwise.
DEFAULT_SOURCE = {"kinetics": "k400", "ssv2": "ssv2", "mit": "mit", "activitynet": "anet", "hacs": "hacs",
                  "videolist": "extra"}


def read_source(fmt: str, path: str | Path, source: str | None = None, split: str | None = None) -> list[dict]:
    if fmt not in READERS:
        raise SourceFormatError(f"unknown annotation format {fmt!r}; known: {sorted(READERS)}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    return READERS[fmt](path, source=source or DEFAULT_SOURCE[fmt], split=split)


__all__ = ["READERS", "DEFAULT_SOURCE", "read_source", "resolve_paths", "ResolveReport", "VideoIndex",
           "SourceFormatError", "source_key"]
