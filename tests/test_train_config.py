"""Recipes: typed YAML loading, dotted overrides, clear errors for unknown or ill-typed keys."""
from pathlib import Path

import pytest

from ivtrain.config import ConfigError, Recipe, load_recipe
from ivtrain.models.vit import resolve_vit

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_tiny_recipe_loads_typed():
    r = load_recipe(RECIPES / "iv2_stage1_tiny.yaml")
    assert isinstance(r, Recipe)
    assert r.model.size == "tiny" and r.data.num_frames == 4 and r.data.teacher_frames == 8
    assert isinstance(r.optim.lr, float) and r.optim.lr == pytest.approx(1e-3)


def test_dotted_overrides_are_parsed_and_typed():
    r = load_recipe(RECIPES / "iv2_stage1_tiny.yaml",
                    ["optim.lr=1e-3", "train.zero_stage=2", "data.scales=[1.0, 0.5]", "mask.type=tube",
                     "teachers.motion.path=/x/y", "optim.warmup_steps=7"])
    assert r.optim.lr == 1e-3 and r.train.zero_stage == 2 and r.data.scales == [1.0, 0.5]
    assert r.mask.type == "tube" and r.teachers.motion.path == "/x/y" and r.optim.warmup_steps == 7
    # an int where a float is expected is widened
    assert load_recipe(None, ["optim.lr=1", "train.steps=5"]).optim.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1e-3", "unknown key optim.lrr"),
    ("nonsense.x=1", "unknown key nonsense"),
    ("train.steps=ten", "train.steps: expected an integer"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("train.bf16=3", "train.bf16: expected true/false"),
    ("mask.type=blocks", "mask.type: 'blocks' is not one of"),
    ("data.scales=0.5", "data.scales: expected a list"),
    ("optim=3", "optim: expected a mapping"),
    ("mask.ratio=1.0", "mask.ratio must be in [0, 1)"),
    ("data.teacher_frames=6", "must be a multiple of data.num_frames"),
    ("optim.lr", "must look like key.path=value"),
])
def test_bad_keys_and_values_fail_clearly(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(RECIPES / "iv2_stage1_tiny.yaml", [override])
    assert message in str(err.value)


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe("/nonexistent/recipe.yaml")


@pytest.mark.parametrize("name, dim, depth, heads, mlp", [
    ("iv2_stage1_tiny", 64, 4, 4, 128), ("iv2_stage1_b", 768, 12, 12, 3072),
    ("iv2_stage1_1b", 1408, 40, 16, 6144), ("iv2_stage1_6b", 3200, 48, 25, 12800)])
def test_shipped_recipes_resolve_to_the_documented_sizes(name, dim, depth, heads, mlp):
    r = load_recipe(RECIPES / f"{name}.yaml")
    v = resolve_vit(r.model)
    assert (v.embed_dim, v.depth, v.num_heads, v.mlp_dim) == (dim, depth, heads, mlp)
    if name != "iv2_stage1_tiny":
        assert (v.patch_size, r.data.image_size, r.data.num_frames, r.data.teacher_frames) == (14, 224, 8, 16)
