"""The layering the design promises: ivtrain and ivdata never import each other (the shard format is their only
contract; what both need lives in ivkit, which imports neither); inside ivdata, curation algorithms know nothing of
stages or pipelines and the runtime nothing of media; and no trainer module grows past what a reader can take in at
once."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONGEST = 300   # lines


def imported_modules(path: Path) -> set[str]:
    """Full names of every module a file imports, at module level or inside functions (`from a.b import c` counts
    as a.b and a.b.c, since c may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module a file imports."""
    return {name.split(".")[0] for name in imported_modules(path)}


@pytest.mark.parametrize("package, forbidden", [("ivdata", {"ivtrain"}), ("ivtrain", {"ivdata"}),
                                                 ("ivkit", {"ivdata", "ivtrain"})])
def test_packages_keep_to_their_side(package, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted(imported_packages(p) & forbidden)
                 for p in sorted((ROOT / package).rglob("*.py")) if imported_packages(p) & forbidden}
    assert not offenders, offenders


def test_every_trainer_module_fits_on_a_few_screens():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "ivtrain").rglob("*.py")}
    assert not {k: n for k, n in lengths.items() if n > LONGEST}, sorted(lengths.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.parametrize("folder, forbidden", [("ivdata/curate", ("ivdata.stages", "ivdata.pipeline")),
                                                ("ivdata/runtime", ("ivdata.media",))])
def test_data_engine_layers_import_only_downwards(folder, forbidden):
    def bad(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in imported_modules(p) if bad(n)) for p in files}
    assert not {k: v for k, v in offenders.items() if v}, offenders
