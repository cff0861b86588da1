"""One typed-YAML loader reads every recipe kind (training, VidCap, KMash, InternVid2): each shipped
recipe loads, and a typo or a wrong type in any of them names the dotted key before work starts."""
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ivdata.annotate.config import load_config
from ivdata.curate import internvid2, kmash
from ivkit.typed_yaml import ConfigError, apply_override, build, parse_override, read_mapping
from ivtrain.config import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
LOADERS = {"iv2_stage": load_recipe, "next_stage": load_recipe, "vidcap": load_config, "kmash": kmash.load_recipe,
           "internvid2": internvid2.load_recipe}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(path):
    loader = next(f for prefix, f in LOADERS.items() if path.stem.startswith(prefix))
    assert loader(path) is not None


@pytest.mark.parametrize("loader, text, message", [
    (load_recipe, "objective: iv2_stage1\noptim:\n  lrr: 1\n", "unknown key optim.lrr"),
    (load_config, "vidcap:\n  asr:\n    beam_size: five\n", "asr.beam_size: expected an integer, got 'five'"),
    (load_config, "vidcap:\n  asr:\n    translate:\n      src_lang_codes: [de]\n",
     "asr.translate.src_lang_codes: expected a mapping"),
    (kmash.load_recipe, "name: x\nsources:\n  - {name: a, quota: lots, annotations: []}\n",
     "sources[0].quota: expected an integer"),
    (kmash.load_recipe, "name: x\nsources:\n  - {name: a, quota: 1, annotations: {format: kinetics}}\n",
     "sources[0].annotations: expected a list"),
    (internvid2.load_recipe, "name: x\nrules: {min_duration_s: short}\nsubsets: []\n",
     "rules.min_duration_s: expected a number"),
    (internvid2.load_recipe, "name: x\nrules: {}\nsubsets: [{name: s, method: top_k}]\n",
     "subsets[0]: subset s: top_k needs exactly one of k, fraction"),
    (internvid2.load_recipe, "name: x\nsubsets: []\n", "missing key rules"),
    (load_recipe, "- a\n- b\n", "top level must be a mapping"),
    (load_recipe, "optim: {lr: [1\n", "not valid YAML"),
])
def test_bad_recipes_name_the_key(tmp_path, loader, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        loader(path)
    assert message in str(err.value)


@dataclass
class Inner:
    size: int = 1
    names: tuple[str, ...] = ("a",)


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    table: dict[str, float] = field(default_factory=dict)
    ratio: float | None = None


def test_build_converts_and_checks_types():
    o = build(Outer, {"name": "x", "inner": None, "table": {"a": 1}, "ratio": "1e-3"})
    assert o.inner == Inner() and o.table == {"a": 1.0} and isinstance(o.table["a"], float) and o.ratio == 1e-3
    assert build(Outer, {"name": 3, "inner": {"names": ["b", "c"]}}).inner.names == ("b", "c")
    with pytest.raises(ConfigError, match="table.a: expected a number"):
        build(Outer, {"name": "x", "table": {"a": "big"}})
    with pytest.raises(ConfigError, match="inner.size: expected an integer, got True"):
        build(Outer, {"name": "x", "inner": {"size": True}})
    with pytest.raises(ConfigError, match="missing key name"):
        build(Outer, {})


def test_overrides_reach_nested_sections():
    raw = {"inner": None}
    apply_override(raw, "inner.size=4")
    apply_override(raw, "table={a: 2}")
    apply_override(raw, "name=run")
    assert build(Outer, raw) == Outer(name="run", inner=Inner(size=4), table={"a": 2.0})
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    for bad, message in (("a.b", "must look like key.path=value"), ("a..b=1", "empty key segment"),
                         ("a=[1", "not valid YAML")):
        with pytest.raises(ConfigError, match=message):
            apply_override({}, bad)
    with pytest.raises(ConfigError, match="name is not a section"):
        apply_override({"name": "x"}, "name.first=y")


def test_read_mapping_of_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_mapping(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_mapping(tmp_path / "empty.yaml") == {}
