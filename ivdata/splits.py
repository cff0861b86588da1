"""Dataset split names: every spelling the sources use, mapped to train | val | test.

One table serves ingest (any list a user hands in) and the dataset readers (Kinetics writes `validate`,
ActivityNet `validation`, HACS `training`), so a split means the same thing however it was spelled, and
eval-split leakage checks compare canonical names only.
"""
from __future__ import annotations

CANONICAL = {
    "train": "train", "training": "train", "trainval": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val",
    "test": "test", "testing": "test",
}
EVAL_SPLITS = ("val", "test")


def canonical_split(raw: object) -> str | None:
    """The canonical name of a split spelling, or None when the spelling is unknown or blank."""
    if raw is None:
        return None
    return CANONICAL.get(str(raw).strip().lower())


def is_eval_split(split: object) -> bool:
    """True for val/test in any known spelling (so manifests written before ingest normalised count too)."""
    return canonical_split(split) in EVAL_SPLITS


def eval_split_sql(column: str = "split") -> str:
    """A SQL predicate that is true when `column` names an eval split in any known spelling."""
    spellings = sorted(k for k, v in CANONICAL.items() if v in EVAL_SPLITS)
    return f"lower(trim({column})) IN ({', '.join(repr(s) for s in spellings)})"
