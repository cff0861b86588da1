"""probe: container/stream facts and decodability of every ingested video (images: the images stage).

needs: videos.path. produces: videos.{duration_s, fps, num_frames, width, height, rotation, codecs,
has_audio}, status 'probed', or status 'failed' with the reason.
"""
from __future__ import annotations

from ivdata.manifest import Manifest
from ivdata.media.probe import probe
from ivdata.stages.base import Stage, StageStats, failed

PROBE_COLUMNS = ("duration_s", "fps", "num_frames", "width", "height", "rotation", "vcodec", "acodec",
                 "has_video", "has_audio", "audio_rate", "container")


class ProbeStage(Stage):
    name = "probe"
    needs = ("videos.path", "videos.media", "videos.status")
    produces = tuple(f"videos.{c}" for c in PROBE_COLUMNS + ("status", "error", "failed_stage"))

    def pending(self, m: Manifest, retry_failed: bool) -> list[tuple[str, str]]:
        # images are probed (decoded, sized) and stored by the images stage
        q = "SELECT video_id, path FROM videos WHERE media = 'video' AND (status = 'ingested'"
        q += " OR (status = 'failed' AND failed_stage = 'probe'))" if retry_failed else ")"
        return [tuple(r) for r in m.execute(q + " ORDER BY video_id").fetchall()]

    def work(self, item: tuple[str, str]) -> dict:
        return probe(item[1]).as_row()

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        rows = []
        for (vid, _), res in done:
            row = {"video_id": vid, **{c: None for c in PROBE_COLUMNS}}
            if failed(res):
                row.update(status="failed", error=res.reason, failed_stage="probe")
                stats.failed += 1
            else:
                row.update({c: res[c] for c in PROBE_COLUMNS}, status="probed", error=None, failed_stage=None)
                stats.ok += 1
                stats.media_seconds += res["duration_s"] or 0.0
            rows.append(row)
        m.update_rows("videos", "video_id", rows)
