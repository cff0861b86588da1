"""KMash: a labelled-action mix sampled to per-source quotas (InternVideo2 / UMT stage-1 data).

KMash1.1M = K710 658K + SSv2 169K + HACS 106K + ActivityNet 15K + MiT 152K. K710 is the union of the
Kinetics-400/600/700 training sets with one copy per YouTube video and every video that appears in any
Kinetics val/test split removed (so a Kinetics evaluation never sees its own test videos in training).

A recipe (recipes/kmash_*.yaml) names, per mix source, the annotation files to read, the files to
exclude, where the videos are, and a quota. `plan_kmash` reads, excludes, resolves files on disk and
draws each quota with its own seeded RNG, so changing one source's quota never changes another's draw.
Labels stay in the manifest as metadata; `include_labels: false` (the default) tells the shard writer
to leave them out of training shards.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ivdata.curate.sources import VideoIndex, read_source, resolve_paths, source_key
from ivkit.typed_yaml import ConfigError, build, read_mapping


@dataclass
class AnnotationRef:
    format: str                       # kinetics | ssv2 | mit | activitynet | hacs
    path: str                         # relative to the data root unless absolute
    source: str | None = None         # dataset name carried by the rows (k400, k600, ...)
    split: str | None = None          # for files whose split is not in the file or its name


@dataclass
class MixSource:
    name: str
    quota: int
    annotations: list[AnnotationRef]
    videos_dir: str | None = None
    exclude: list[AnnotationRef] = field(default_factory=list)   # any video in these is never drawn
    splits: list[str] = field(default_factory=lambda: ["train"])
    where: dict = field(default_factory=dict)                    # row field -> required value

    def __post_init__(self):
        if self.quota < 0:
            raise ConfigError(f"source {self.name}: quota must be a non-negative integer, got {self.quota}")


@dataclass
class KMashRecipe:
    name: str
    sources: list[MixSource]
    seed: int = 0
    include_labels: bool = False
    data_root: str | None = None
    require_files: bool = True        # draw only rows whose video file was found

    @property
    def total_quota(self) -> int:
        return sum(s.quota for s in self.sources)


def load_recipe(path: str | Path) -> KMashRecipe:
    raw = read_mapping(path)
    raw.setdefault("name", Path(path).stem)
    recipe = build(KMashRecipe, raw)
    names = [s.name for s in recipe.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: mix source names repeat: {names}")
    return recipe


def scaled_quota(quota: int, scale: float) -> int:
    """A quota scaled for a small run; a source asked for keeps at least one clip."""
    if quota == 0:
        return 0
    return max(1, round(quota * scale))


@dataclass
class SourcePlan:
    name: str
    quota: int                 # after scaling
    rows_read: int = 0
    excluded: int = 0          # video is in an exclude list (e.g. a Kinetics val/test split)
    duplicates: int = 0        # same video+span already read from another file of this source
    wrong_split: int = 0
    filtered: int = 0          # rejected by `where`
    missing_files: int = 0
    missing_examples: list = field(default_factory=list)
    available: int = 0
    selected: int = 0

    @property
    def shortfall(self) -> int:
        return max(0, self.quota - self.selected)


@dataclass
class KMashPlan:
    recipe: str
    scale: float
    rows: list[dict]
    sources: list[SourcePlan]
    missing_annotations: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing_annotations and all(s.shortfall == 0 for s in self.sources)

    def summary(self) -> dict:
        return {"recipe": self.recipe, "scale": self.scale, "selected": len(self.rows),
                "complete": self.complete, "missing_annotations": self.missing_annotations,
                "sources": [{**asdict(s), "shortfall": s.shortfall} for s in self.sources]}


def _resolve(root: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def plan_kmash(recipe: KMashRecipe, data_root: str | Path | None = None, scale: float = 1.0) -> KMashPlan:
    """Read, exclude, resolve and sample every mix source. Missing files are counted, not fatal."""
    root = Path(data_root or recipe.data_root or ".").expanduser()
    plans, out_rows, missing_ann = [], [], []
    for src in recipe.sources:
        plan = SourcePlan(src.name, scaled_quota(src.quota, scale))
        plans.append(plan)
        excluded_keys: set[str] = set()
        for ref in src.exclude:
            p = _resolve(root, ref.path)
            if not p.is_file():
                missing_ann.append(str(p))
                continue
            excluded_keys.update(source_key(r) for r in read_source(ref.format, p, ref.source, ref.split))
        candidates, seen = [], set()
        for ref in src.annotations:
            p = _resolve(root, ref.path)
            if not p.is_file():
                missing_ann.append(str(p))
                continue
            for r in read_source(ref.format, p, ref.source, ref.split):
                plan.rows_read += 1
                if r["split"] not in src.splits:
                    plan.wrong_split += 1
                    continue
                if source_key(r) in excluded_keys:
                    plan.excluded += 1
                    continue
                if any(r.get(k) != v for k, v in src.where.items()):
                    plan.filtered += 1
                    continue
                ident = (source_key(r), r["start"], r["end"])
                if ident in seen:
                    plan.duplicates += 1
                    continue
                seen.add(ident)
                candidates.append(r)
        if src.videos_dir is not None:
            vdir = _resolve(root, src.videos_dir)
            if vdir.is_dir():
                rep = resolve_paths(candidates, VideoIndex(vdir))
                plan.missing_files = sum(rep.missing.values())
                plan.missing_examples = [x for ex in rep.missing_examples.values() for x in ex][:5]
            else:
                missing_ann.append(f"{vdir} (videos_dir)")
                plan.missing_files = len(candidates)
        else:
            plan.missing_files = len(candidates)
        if recipe.require_files:
            candidates = [r for r in candidates if r["path"]]
        plan.available = len(candidates)
        # Sort first so the draw depends on the annotation content, not on file order.
        candidates.sort(key=lambda r: (source_key(r), r["start"] or 0.0, r["end"] or 0.0))
        rng = random.Random(f"{recipe.seed}:{src.name}")
        chosen = rng.sample(candidates, min(plan.quota, len(candidates)))
        plan.selected = len(chosen)
        for r in chosen:
            r.update(mix_source=src.name, recipe=recipe.name)
        out_rows.extend(chosen)
    return KMashPlan(recipe.name, scale, out_rows, plans, missing_ann)


def format_plan(plan: KMashPlan) -> str:
    """A plain-text table of what was asked, found and drawn, for the terminal and the run log."""
    head = f"{'source':<10}{'quota':>9}{'read':>9}{'excluded':>9}{'dups':>7}{'no file':>9}{'avail':>9}{'drawn':>9}{'short':>8}"
    lines = [f"recipe {plan.recipe} (scale {plan.scale:g})", head]
    for s in plan.sources:
        lines.append(f"{s.name:<10}{s.quota:>9}{s.rows_read:>9}{s.excluded:>9}{s.duplicates:>7}"
                     f"{s.missing_files:>9}{s.available:>9}{s.selected:>9}{s.shortfall:>8}")
        if s.missing_examples:
            lines.append(f"    missing files, e.g. {', '.join(map(str, s.missing_examples))}")
    for m in plan.missing_annotations:
        lines.append(f"missing: {m}")
    return "\n".join(lines)
