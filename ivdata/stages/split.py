"""split: shots and windows -> clip rows (the VidCap / KMash windowing rules).

needs: probed videos (duration, fps), spans for method 'spans'. produces: clips (status 'pending'),
splits (one row per handled video, so a video that yields no clip is not split again).

Methods:  shots  - shot detection, then the rules below applied per shot
          whole  - the whole video, then the rules
          fixed  - consecutive fixed windows of `window_s`
          spans  - the spans a source list gave (e.g. Kinetics time_start/time_end)
Rules:    a segment shorter than `min_s` (2 s) is dropped; one longer than `max_s` (30 s) becomes a
          single random `max_s` window, seeded by (seed, video, segment) so reruns agree.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ivdata.corpus import Corpus
from ivdata.manifest import Manifest
from ivdata.media.shots import make_detector
from ivdata.stages.base import Stage, StageConfigError, StageStats, failed

METHODS = ("shots", "whole", "fixed", "spans")


@dataclass
class SplitConfig:
    method: str = "shots"
    min_s: float = 2.0
    max_s: float = 30.0
    window_s: float = 10.0
    seed: int = 0
    detector: str = "pyscenedetect"
    weights: str | None = None
    threshold: float | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"split method {self.method!r}: one of {', '.join(METHODS)}")
        if not 0 < self.min_s <= self.max_s:
            raise ValueError("need 0 < min_s <= max_s")
        if not self.window_s > 0:       # a window of 0 s never moves past the start of the video
            raise ValueError(f"--window-s must be greater than 0, not {self.window_s:g}")


def clip_id_for(video_id: str, start: float, end: float) -> str:
    return f"{video_id}_{round(start * 1000):08d}_{round(end * 1000):08d}"


def window_rules(segments: list[tuple[float, float]], cfg: SplitConfig, video_id: str) -> list[tuple[float, float]]:
    out = []
    for i, (a, b) in enumerate(segments):
        length = b - a
        if length < cfg.min_s - 1e-6:
            continue
        if length > cfg.max_s + 1e-6:
            seed = int(hashlib.sha1(f"{cfg.seed}:{video_id}:{i}".encode()).hexdigest()[:8], 16)
            a = round(a + random.Random(seed).uniform(0, length - cfg.max_s), 3)
            b = a + cfg.max_s
        out.append((round(a, 3), round(b, 3)))
    return out


def fixed_windows(duration: float, cfg: SplitConfig) -> list[tuple[float, float]]:
    out, t = [], 0.0
    while t + cfg.min_s <= duration + 1e-6:
        out.append((round(t, 3), round(min(t + cfg.window_s, duration), 3)))
        t += cfg.window_s
    return out


class SplitStage(Stage):
    name = "split"
    needs = ("videos.path", "videos.duration_s", "videos.status", "spans")
    produces = ("clips", "splits")

    def __init__(self, corpus: Corpus, cfg: SplitConfig | None = None):
        super().__init__(corpus)
        self.cfg = cfg or SplitConfig()

    def check(self, m: Manifest, retry_failed: bool) -> None:
        """A detector that cannot be built or run (unknown name, weights that do not load or do not take
        the detector's input) is a configuration fault: refused once, not recorded against every video."""
        if self.cfg.method != "shots":
            return
        try:
            make_detector(self.cfg.detector, self.cfg.weights, self.cfg.threshold).check()
        except Exception as e:
            raise StageConfigError(f"shot detector {self.cfg.detector!r}"
                                   + (f" (weights {self.cfg.weights})" if self.cfg.weights else "")
                                   + f": {type(e).__name__}: {e}") from e

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        # the videos that take longest to decode first (frames x pixels): the workers' last items are short
        # ones, so none sits idle while another finishes a long video
        q = ("SELECT v.video_id, v.path, v.duration_s FROM videos v LEFT JOIN splits s USING (video_id) "
             "WHERE v.status = 'probed' AND (s.video_id IS NULL" + (" OR s.status = 'failed')" if retry_failed else ")")
             + " ORDER BY coalesce(v.num_frames, 0) * coalesce(v.width, 0) * coalesce(v.height, 0) DESC, v.video_id")
        items = m.rows(q)
        if self.cfg.method == "spans":
            spans: dict[str, list] = {}
            for vid, a, b in m.execute("SELECT video_id, start_s, end_s FROM spans ORDER BY start_s").fetchall():
                spans.setdefault(vid, []).append((a, b))
            for it in items:
                it["spans"] = spans.get(it["video_id"], [])
        return items

    def work(self, item: dict) -> dict:
        cfg, dur, vid = self.cfg, item["duration_s"] or 0.0, item["video_id"]
        if cfg.method == "shots":
            shots = make_detector(cfg.detector, cfg.weights, cfg.threshold).detect(item["path"])
            spans = window_rules(shots, cfg, vid)
        elif cfg.method == "whole":
            shots = [(0.0, dur)]
            spans = window_rules(shots, cfg, vid)
        elif cfg.method == "fixed":
            shots = [(0.0, dur)]
            spans = fixed_windows(dur, cfg)
        else:
            shots = [(a, min(b, dur)) for a, b in item.get("spans", []) if a < dur]
            spans = [(round(a, 3), round(b, 3)) for a, b in shots if b - a > 0]
        reason = None
        if not spans:
            reason = (f"no clip: video is {dur:.2f} s, shorter than the {cfg.min_s:g} s minimum" if dur < cfg.min_s
                      else f"no clip: no segment of at least {cfg.min_s:g} s among {len(shots)}")
        return {"nshots": len(shots), "spans": spans, "reason": reason}

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        clips, splits = [], []
        for item, res in done:
            vid = item["video_id"]
            if failed(res):
                splits.append({"video_id": vid, "method": self.cfg.method, "nshots": None, "nclips": 0,
                               "status": "failed", "error": res.reason})
                stats.failed += 1
                continue
            for a, b in res["spans"]:
                clips.append({"clip_id": clip_id_for(vid, a, b), "video_id": vid, "start_s": a, "end_s": b,
                              "split_method": self.cfg.method, "status": "pending"})
            status = "ok" if res["spans"] else "skipped"
            splits.append({"video_id": vid, "method": self.cfg.method, "nshots": res["nshots"],
                           "nclips": len(res["spans"]), "status": status, "error": res["reason"]})
            stats.ok += status == "ok"
            stats.skipped += status == "skipped"
            stats.media_seconds += item["duration_s"] or 0.0
        m.insert_rows("clips", clips, mode="INSERT OR IGNORE")
        m.insert_rows("splits", splits)
        stats.extra["clips"] = stats.extra.get("clips", 0) + len(clips)
