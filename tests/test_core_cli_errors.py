"""Bad options and a busy manifest: one clear line, exit code 2, nothing written."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def iv(corpus, *args: str):
    return runner.invoke(app, [*args, "-c", str(corpus.manifest_path)])


def one_line_error(res, message: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error:") and len(res.output.strip().splitlines()) == 1, res.output
    assert message in res.output, res.output


def runs(corpus) -> int:
    with corpus.manifest(read_only=True) as m:
        return m.scalar("SELECT count(*) FROM runs")


def test_fixed_windows_of_zero_or_negative_length_are_refused(small_corpus):
    before = runs(small_corpus)
    for w in ("0", "-2"):
        one_line_error(iv(small_corpus, "data", "split", "--method", "fixed", "--window-s", w),
                       "--window-s must be greater than 0")
    assert runs(small_corpus) == before


def test_dedupe_refuses_an_eval_list_it_cannot_read_before_any_work(small_corpus, tmp_path):
    before = runs(small_corpus)
    one_line_error(iv(small_corpus, "data", "dedupe", "--eval", "nonsense"), "give FORMAT[:SOURCE]:PATH")
    one_line_error(iv(small_corpus, "data", "dedupe", "--eval", "nonsense:k400:/x.csv"), "FORMAT one of")
    one_line_error(iv(small_corpus, "data", "dedupe", "--eval", f"kinetics:{tmp_path / 'none.csv'}"),
                   "does not exist")
    assert runs(small_corpus) == before


@pytest.mark.parametrize("holder", ["writer", "reader"])
def test_a_manifest_another_process_holds_is_one_clear_line(small_corpus, holder):
    """Another process holds the manifest: a writer (no one else may open it) or a reader (no one may write)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'reader');"
                               " print('ready', flush=True); sys.stdin.read()", str(small_corpus.manifest_path), holder],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for args in (("data", "shard", "--subset", "all"), ("manifest", "select", "x", "--where", "true"),
                     ("data", "split", "--method", "fixed")):
            one_line_error(iv(small_corpus, *args), f"is in use by another process (PID {proc.pid})")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    with small_corpus.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM subset_defs WHERE name = 'x'") == 0


def test_internvid2_selection_before_dedupe_is_refused_and_writes_nothing(small_corpus):
    res = iv(small_corpus, "data", "select-internvid2", str(RECIPES / "internvid2.yaml"))
    one_line_error(res, "within subset 'deduped', which does not exist (run `iv data dedupe` first)")
    with small_corpus.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM subset_defs WHERE name LIKE 'internvid2%'") == 0


def test_an_unreachable_or_malformed_ray_address_is_one_line_before_anything_is_recorded(small_corpus, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    before = runs(small_corpus)
    for stage in (("data", "probe"), ("data", "cut"), ("data", "shard")):
        one_line_error(iv(small_corpus, *stage, "--executor", "ray", "--ray-address", closed),
                       f"cannot reach a Ray cluster at {closed}")
    one_line_error(iv(small_corpus, "data", "probe", "--executor", "ray", "--ray-address", "head-node"),
                   "expected HOST:PORT")
    one_line_error(iv(small_corpus, "data", "probe", "--executor", "dask"), "--executor 'dask': one of local, ray")
    one_line_error(iv(small_corpus, "data", "probe", "--ray-address", closed), "--ray-address needs --executor ray")
    assert runs(small_corpus) == before
