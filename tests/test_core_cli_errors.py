"""Bad options and a busy manifest: one clear line, exit code 2, nothing written."""
from __future__ import annotations

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
