"""Recipes: typed YAML loading, dotted overrides, clear errors for unknown or ill-typed keys."""
from pathlib import Path

import pytest

from ivtrain.config import ConfigError, Recipe, load_recipe
from ivtrain.models.vit import resolve_vit

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_tiny_recipe_loads_typed():
    r = load_recipe(RECIPES / "iv2_stage1_tiny.yaml")
    assert isinstance(r, Recipe)
    assert r.objective == "iv2_stage1" and r.section.model.size == "tiny"
    assert r.section.student_frames == 4 and r.data.num_frames == 8
    assert r.section.teachers.semantic.path == "runs/assets/tiny_clip"   # ${assets} filled
    assert isinstance(r.optim.lr, float) and r.optim.lr == pytest.approx(1e-3)


def test_dotted_overrides_are_parsed_and_typed():
    r = load_recipe(RECIPES / "iv2_stage1_tiny.yaml",
                    ["optim.lr=1e-3", "train.zero_stage=2", "data.scales=[1.0, 0.5]", "iv2_stage1.mask.type=tube",
                     "iv2_stage1.teachers.motion.path=/x/y", "optim.warmup_steps=7"])
    assert r.optim.lr == 1e-3 and r.train.zero_stage == 2 and r.data.scales == [1.0, 0.5]
    assert r.section.mask.type == "tube" and r.section.teachers.motion.path == "/x/y" and r.optim.warmup_steps == 7
    # an int where a float is expected is widened
    assert load_recipe(None, ["optim.lr=1", "train.steps=5", "data.shards=x"], objective="iv2_stage1").optim.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1e-3", "unknown key optim.lrr"),
    ("nonsense.x=1", "unknown key nonsense"),
    ("train.steps=ten", "train.steps: expected an integer"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("train.bf16=3", "train.bf16: expected true/false"),
    ("iv2_stage1.mask.type=blocks", "iv2_stage1.mask.type: 'blocks' is not one of"),
    ("data.scales=0.5", "data.scales: expected a list"),
    ("optim=3", "optim: expected a mapping"),
    ("iv2_stage1.mask.ratio=1.0", "iv2_stage1.mask.ratio must be in [0, 1)"),
    ("iv2_stage1.student_frames=3", "must be a multiple of iv2_stage1.student_frames"),
    ("iv2_stage1.model.size=huge", "iv2_stage1.model: unknown ViT size 'huge'"),
    ("train.steps=0", "set one of train.steps and train.epochs"),
    ("train.steps=-3", "set one of train.steps and train.epochs"),
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("data.sources=[{shards: a}]", "set data.shards (one shard set) or data.sources"),
    ("iv2_stage2.x=1", "unknown key iv2_stage2: a recipe holds objective"),
    ("objective=nope", "unknown objective 'nope'"),
    ("teachers.motion.path=/x", "recipe key teachers has moved to iv2_stage1.teachers"),
    ("model.size=b", "recipe key model has moved to iv2_stage1.model"),
    ("data.teacher_frames=16", "recipe key data.teacher_frames has moved to data.num_frames"),
    ("assets=", "iv2_stage1.teachers.semantic.path uses ${assets}: set assets=DIR"),
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
    v = resolve_vit(r.section.model)
    assert (v.embed_dim, v.depth, v.num_heads, v.mlp_dim) == (dim, depth, heads, mlp)
    if name != "iv2_stage1_tiny":
        assert (v.patch_size, r.data.image_size, r.section.student_frames, r.data.num_frames) == (14, 224, 8, 16)
        assert (v.pool_heads, v.mlp_act) == (16, "gelu_tanh")   # as released, whatever the blocks' head count


def test_documented_string_values_are_not_read_as_yaml_1_1_booleans(tmp_path):
    """`off`, `on`, `yes`, `no` are strings (YAML 1.2): data.index_cache=off is the documented value, and a boolean
    key given `yes` says what it wants instead of taking it as true."""
    assert load_recipe(RECIPES / "iv2_stage1_tiny.yaml", ["data.index_cache=off"]).data.index_cache == "off"
    path = tmp_path / "r.yaml"
    path.write_text((RECIPES / "iv2_stage1_tiny.yaml").read_text().replace("num_workers: 2",
                                                                          "num_workers: 2\n  index_cache: off"))
    assert load_recipe(path).data.index_cache == "off"
    with pytest.raises(ConfigError, match="train.bf16: expected true/false, got 'yes'"):
        load_recipe(RECIPES / "iv2_stage1_tiny.yaml", ["train.bf16=yes"])
