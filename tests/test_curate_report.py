"""The corpus report renders even for an empty manifest (the planted and scored corpora are reported in
test_curate_dedup.py and test_curate_score.py)."""
from ivdata.curate.report import write_report
from ivdata.manifest import Manifest


def test_report_of_an_empty_manifest(tmp_path):
    with Manifest(tmp_path / "e.duckdb", create=True):
        pass
    page = write_report(tmp_path / "e.duckdb", tmp_path / "r")
    assert "no clips" in page.read_text() and (tmp_path / "r" / "durations.png").stat().st_size > 1000
