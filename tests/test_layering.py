"""The layering the design promises: ivtrain and ivdata never import each other (the shard format is their only
contract; what both need lives in ivkit, which imports neither), and no trainer module grows past what a reader can
take in at once."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONGEST = 300   # lines


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package, forbidden", [("ivdata", {"ivtrain"}), ("ivtrain", {"ivdata"}),
                                                 ("ivkit", {"ivdata", "ivtrain"})])
def test_packages_keep_to_their_side(package, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted(imported_packages(p) & forbidden)
                 for p in sorted((ROOT / package).rglob("*.py")) if imported_packages(p) & forbidden}
    assert not offenders, offenders


def test_every_trainer_module_fits_on_a_few_screens():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "ivtrain").rglob("*.py")}
    assert not {k: n for k, n in lengths.items() if n > LONGEST}, sorted(lengths.items(), key=lambda kv: -kv[1])[:5]
