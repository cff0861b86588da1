"""The curation commands, through typer, as `iv` mounts them."""
import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from ivdata.curate_cli import mount
from test_curate_kmash import RECIPES, make_data_root, tiny_video

runner = CliRunner()


def app() -> typer.Typer:
    root, data, corpus = typer.Typer(), typer.Typer(), typer.Typer()
    root.add_typer(data, name="data")
    root.add_typer(corpus, name="corpus")
    mount(data, corpus)
    return root


def test_kmash_dry_run_reports_missing_and_strict_fails(tmp_path):
    root = make_data_root(tmp_path / "data", lambda p: p.touch(), skip_every=4)
    plan = tmp_path / "plan.json"
    r = runner.invoke(app(), ["data", "kmash", str(RECIPES / "kmash_1.1m.yaml"), "--data-root", str(root),
                              "--scale", "1e-4", "--dry-run", "--plan-out", str(plan)])
    assert r.exit_code == 0, r.output
    assert "k710" in r.output and "missing files, e.g." in r.output and "kinetics600/validate.csv" in r.output
    summary = json.loads(plan.read_text())
    assert {s["name"]: s["selected"] for s in summary["sources"]}["mit"] == 15
    r = runner.invoke(app(), ["data", "kmash", str(RECIPES / "kmash_1.1m.yaml"), "--data-root", str(root),
                              "--scale", "1e-4", "--dry-run", "--strict"])
    assert r.exit_code == 2 and "incomplete" in r.output


def test_kmash_dedupe_report_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("IVKIT_HOME", str(tmp_path))
    monkeypatch.setenv("IVKIT_PROGRESS", "0")
    root = make_data_root(tmp_path / "data", lambda p: p.touch())
    # Real files for what the 1e-5 plan draws (the others stay empty placeholders, never opened).
    from ivdata.curate.kmash import load_recipe, plan_kmash
    for r in plan_kmash(load_recipe(RECIPES / "kmash_1.1m.yaml"), root, 1e-5).rows:
        length = (r["end"] - r["start"]) if r["file_is_span"] else ((r["end"] + 1) if r["end"] else 3.0)
        tiny_video(Path(r["path"]), length)
    a = app()
    r = runner.invoke(a, ["data", "kmash", str(RECIPES / "kmash_1.1m.yaml"), "--data-root", str(root),
                          "--scale", "1e-5", "--corpus", "km"])
    assert r.exit_code == 0, r.output
    assert "subset kmash_1_1m: 13 clips" in r.output
    val = tmp_path / "data" / "kinetics400" / "validate.csv"
    r = runner.invoke(a, ["data", "dedupe", "--corpus", "km", "--eval", f"kinetics:k400:{val}"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(a, ["data", "score", "--corpus", "km", "--metrics", "motion"])
    assert r.exit_code == 0 and "score: 13 ok" in r.output, r.output
    r = runner.invoke(a, ["corpus", "report", "--corpus", "km"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "corpora" / "km" / "report" / "index.html").is_file()
    r = runner.invoke(a, ["data", "score", "--corpus", "km", "--metrics", "aesthetic"])
    assert r.exit_code == 2 and "need model_dir" in r.output
