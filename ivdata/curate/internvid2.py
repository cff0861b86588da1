"""InternVid-style selection: keep the clips whose captions fit best, and sample for diversity.

  top_k  (InternVid-FLT) the k clips with the highest clip-caption similarity, among those that pass
         the rules.
  div    (InternVid-DIV) n clips drawn without replacement with weight 1 / (#clips of the same source
         video), so long videos with many clips do not crowd out the rest. Seeded: the draw uses
         Efraimidis-Spirakis keys u^(1/w) over clips sorted by id, so it is reproducible.
Both read the manifest and write a named subset; recipes/internvid2.yaml says which, with what rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ivdata.curate.filters import FilterRules
from ivdata.manifest import Manifest, ManifestError
from ivkit.typed_yaml import ConfigError, build, read_mapping


@dataclass
class SubsetSpec:
    name: str
    method: str                 # top_k | div
    k: int | None = None        # top_k: how many; or fraction
    fraction: float | None = None
    n: int | None = None        # div: how many
    metric: str = "clip_text_sim"
    within: str | None = None   # start from this subset (e.g. "deduped") instead of every clip

    def __post_init__(self):
        if self.method not in ("top_k", "div"):
            raise ConfigError(f"subset {self.name}: method must be top_k or div")
        if self.method == "top_k" and (self.k is None) == (self.fraction is None):
            raise ConfigError(f"subset {self.name}: top_k needs exactly one of k, fraction")
        if self.method == "div" and (self.n is None or self.n < 0):
            raise ConfigError(f"subset {self.name}: div needs n >= 0")


@dataclass
class InternVid2Recipe:
    name: str
    rules: FilterRules
    subsets: list[SubsetSpec]
    seed: int = 0
    score: dict = field(default_factory=dict)     # ScoreConfig fields for `iv data score`


def load_recipe(path: str | Path) -> InternVid2Recipe:
    return build(InternVid2Recipe, read_mapping(path))


def _pool_sql(rules: FilterRules, within: str | None, metric: str) -> str:
    """Clips passing the rules (within a subset if given), with video id and the ranking metric."""
    q = (f"SELECT clip_id, video_id, (SELECT max(value) FROM scores s WHERE s.clip_id = clip_info.clip_id "
         f"AND s.metric = '{metric}') AS score FROM clip_info WHERE {rules.where()}")
    if within and within != "all":
        q += " AND clip_id IN (SELECT clip_id FROM subsets WHERE name = '" + within.replace("'", "''") + "')"
    return q


def top_k_sql(pool_sql: str, k: int) -> str:
    return (f"SELECT clip_id FROM ({pool_sql}) p WHERE score IS NOT NULL "
            f"ORDER BY score DESC, clip_id LIMIT {int(k)}")


def div_sql(pool_sql: str, n: int, seed: int) -> str:
    """Weighted sampling without replacement, weight 1/#clips of the clip's video, as one query.

    Efraimidis-Spirakis: draw u ~ U(0,1) per clip, keep the n largest u^(1/w) = u^(#clips of its video).
    u comes from a hash of (seed, clip_id), so the query alone reproduces the draw.
    """
    return (f"SELECT clip_id FROM (SELECT clip_id, count(*) OVER (PARTITION BY video_id) AS same_video "
            f"FROM ({pool_sql}) p) w ORDER BY pow(((hash('{int(seed)}:' || clip_id) % 4294967296) + 0.5) "
            f"/ 4294967296.0, same_video) DESC, clip_id LIMIT {int(n)}")


def select(m: Manifest, recipe: InternVid2Recipe) -> dict[str, int]:
    """Write every subset of the recipe (each recorded with the query that makes it); name -> clips.
    A subset drawn `within` one that does not exist yet (`deduped` before `iv data dedupe`) is refused, with
    nothing written: drawn from nothing, it would be empty without a word."""
    made = {spec.name for spec in recipe.subsets}
    for spec in recipe.subsets:
        if spec.within and spec.within not in made and spec.within != "all" and not m.scalar(
                "SELECT count(*) FROM subset_defs WHERE name = ?", [spec.within]):
            hint = " (run `iv data dedupe` first)" if spec.within == "deduped" else ""
            raise ManifestError(f"subset {spec.name} is drawn within subset {spec.within!r}, which does not "
                                f"exist{hint}")
    out = {}
    for spec in recipe.subsets:
        pool = _pool_sql(recipe.rules, spec.within, spec.metric)
        if spec.method == "top_k":
            k = spec.k if spec.k is not None else round(spec.fraction * m.scalar(f"SELECT count(*) FROM ({pool}) p"))
            sql = top_k_sql(pool, k)
        else:
            sql = div_sql(pool, spec.n, recipe.seed)
        out[spec.name] = m.select_subset(spec.name, sql=sql)
    return out
