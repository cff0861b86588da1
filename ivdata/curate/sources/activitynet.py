"""ActivityNet v1.3 annotations (activity_net.v1-3.min.json), also the format of HACS Segments.

{"version": ..., "taxonomy": [...], "database": {youtube_id: {"subset": "training|validation|testing",
"duration": s, "url": ..., "resolution": "WxH", "annotations": [{"label": str, "segment": [s, e]}]}}}
One row per annotated segment; a video without annotations (the test subset) is one row without a span.
Videos are commonly stored as v_{youtube_id}.mp4.
"""
from __future__ import annotations

import json
from pathlib import Path

from ivdata.curate.sources.base import SourceFormatError, make_row, normalise_split, parse_seconds


def read_activitynet(path: str | Path, source: str = "anet", split: str | None = None) -> list[dict]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceFormatError(f"{path}: not valid JSON ({e})") from None
    db = doc.get("database") if isinstance(doc, dict) else None
    if not isinstance(db, dict):
        raise SourceFormatError(f"{path}: an ActivityNet-style file has a top-level 'database' object")
    rows = []
    for n, (vid, info) in enumerate(db.items()):
        where = f"{path}:database[{vid!r}]"
        if not isinstance(info, dict) or ("subset" not in info and split is None):
            raise SourceFormatError(f"{where}: entry without 'subset'")
        sp = normalise_split(split or info["subset"], where)
        duration = parse_seconds(info.get("duration"), where, "duration")
        # `url` is renamed: to ingest, a row's url is where to download the file from.
        extra = {"youtube_url": info["url"]} if info.get("url") else {}
        if info.get("resolution"):
            extra["resolution"] = info["resolution"]
        if duration is not None:
            extra["video_duration"] = duration
        anns = info.get("annotations") or []
        if not anns:
            rows.append(make_row(source, vid, None, None, sp, None, "youtube", path, n, **extra))
        for a in anns:
            seg = a.get("segment")
            if not (isinstance(seg, list) and len(seg) == 2):
                raise SourceFormatError(f"{where}: segment {seg!r} is not [start, end]")
            start, end = parse_seconds(seg[0], where, "segment start"), parse_seconds(seg[1], where, "segment end")
            if duration is not None:
                end = min(end, duration)  # some segments overrun the video by a frame
            rows.append(make_row(source, vid, start, end, sp, a.get("label"), "youtube", path, n, **extra))
    return rows
