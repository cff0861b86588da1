"""The Ray executor runs a stage's per-item work with the same contract as the local pool."""
from __future__ import annotations

import pytest

from ivdata import pipeline
from ivdata.media.synth import make_video
from ivdata.stages.base import run_stage
from ivdata.stages.probe import ProbeStage

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make test-slow installs it)")


@pytest.mark.slow
def test_probe_stage_on_ray_records_the_same_as_local(tmp_path):
    d = tmp_path / "in"
    for i in range(3):
        make_video(d / f"v{i}.mp4", seconds=2.5, audio=None, seed=i)
    (d / "bad.mp4").write_text("not a video")
    facts = {}
    for backend in ("local", "ray"):
        c = pipeline.open_or_init(f"c_{backend}", tmp_path)
        pipeline.ingest(c, [str(d)])
        run_stage(ProbeStage(c), workers=2, backend=backend)
        with c.manifest(read_only=True) as m:
            facts[backend] = m.rows("SELECT regexp_extract(uri, '[^/]+$') AS f, status, error, num_frames, "
                                    "duration_s FROM videos ORDER BY f")
    ray.shutdown()
    assert facts["ray"] == facts["local"]
    assert [r["status"] for r in facts["ray"]] == ["failed", "probed", "probed", "probed"]
