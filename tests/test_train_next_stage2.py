"""InternVideo-Next stage 2 as an objective: the multi-block masks against their specification, the frozen teacher,
and a stage-1 export that does not fit the recipe."""
import json
import math
import random

import pytest
import torch

from ivtrain.config import load_recipe, to_dict
from ivtrain.data.masking import BlockView, clip_generator, draw_multiblock, multiblock_masks
from ivtrain.export import write_export
from ivtrain.objectives.next_stage1 import NextStage1
from ivtrain.objectives.next_stage2 import NextStage2

torch.set_num_threads(1)
RECIPE = "recipes/next_stage2_tiny.yaml"
VIEWS = [BlockView(8, 0.15, 0.2), BlockView(2, 0.7, 0.03)]   # the B and L recipes' views
GRID = (32, 16, 16)                                           # 32 frames at 224 px, patch 14
DRAWS = 10_000


def write_stage1_run(out, assets, *overrides):
    """A next_stage1 run directory as a finished run leaves it (recipe.json, export), at its initialization."""
    recipe = load_recipe("recipes/next_stage1_tiny.yaml", [f"assets={assets}", "data.shards=unused.wids.json",
                                                             *overrides])
    torch.manual_seed(0)
    stage1 = NextStage1(recipe, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(to_dict(recipe)))
    write_export(out, "next_stage1", stage1.export(stage1.trainable.state_dict()), stage1.encoder_config())
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    NextStage1.write_tiny_assets(out)
    return out


@pytest.fixture(scope="module")
def stage1(assets, tmp_path_factory):
    return write_stage1_run(tmp_path_factory.mktemp("s1") / "run", assets)


def objective(stage1, *overrides):
    recipe = load_recipe(RECIPE, [f"next_stage2.init={stage1}", "data.shards=unused.wids.json", *overrides])
    torch.manual_seed(0)
    return NextStage2(recipe, torch.device("cpu"))


def reference_covered_fraction(view: BlockView, height: int, width: int, rng: random.Random) -> float:
    """The specification, written again from scratch with Python's RNG: V-JEPA's block size (area int(HW scale),
    aspect uniform, sides rounded and clipped), uniform positions, a redraw while the context does not fit."""
    area, keep = int(height * width * view.scale), max(1, int(height * width * view.context))
    while True:
        aspect = rng.uniform(*view.aspect)
        h = min(height, max(1, round(math.sqrt(area * aspect))))
        w = min(width, max(1, round(math.sqrt(area / aspect))))
        covered = set()
        for _ in range(view.blocks):
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            covered |= {(r, c) for r in range(top, top + h) for c in range(left, left + w)}
        if height * width - len(covered) >= keep:
            return len(covered) / (height * width)


def histogram(values, bins=20):
    counts = torch.histc(torch.tensor(values, dtype=torch.float64), bins=bins, min=0.0, max=1.0)
    return counts / counts.sum()


@pytest.mark.parametrize("view", VIEWS, ids=["8x0.15", "2x0.7"])
def test_multiblock_statistics_over_10k_draws_match_the_specification(view):
    frames, height, width = GRID
    keep = max(1, int(height * width * view.context))
    area = int(height * width * view.scale)
    sizes = set()   # every (h, w) an aspect ratio in the range can give
    for i in range(2001):
        aspect = view.aspect[0] + (view.aspect[1] - view.aspect[0]) * i / 2000
        sizes.add((min(height, round(math.sqrt(area * aspect))), min(width, round(math.sqrt(area / aspect)))))
    fractions, aspects, attempts = [], [], 0
    for seed in range(DRAWS):
        d = draw_multiblock(view, GRID, clip_generator(seed, 0))
        assert len(d.boxes) == view.blocks and len({(h, w) for _, _, h, w in d.boxes}) == 1   # one size a view
        top, left, h, w = d.boxes[0]
        assert (h, w) in sizes
        assert all(0 <= t and t + h <= height and 0 <= l_ and l_ + w <= width for t, l_, _, _ in d.boxes)
        covered = torch.zeros(height, width, dtype=torch.bool)
        for t, l_, bh, bw in d.boxes:
            covered[t:t + bh, l_:l_ + bw] = True
        assert torch.equal(covered, d.covered)
        planes = d.visible.reshape(frames, height * width)
        # the whole clip in time: the same context in every frame, exactly `keep` patches, none under a block
        assert (planes == planes[0]).all() and int(planes[0].sum()) == keep
        assert not (planes[0] & d.covered.flatten()).any()
        fractions.append(float(d.covered.float().mean()))
        aspects.append(h / w)
        attempts += d.attempts
    ours = histogram(fractions)
    rng = random.Random(1234)
    reference = histogram([reference_covered_fraction(view, height, width, rng) for _ in range(DRAWS)])
    assert 0.5 * float((ours - reference).abs().sum()) < 0.05, (ours, reference)   # total variation distance
    assert abs(sum(aspects) / DRAWS - (view.aspect[0] + view.aspect[1]) / 2) < 0.1
    assert min(aspects) < 0.85 and max(aspects) > 1.35   # both ends of the range are reached
    assert min(fractions) >= area / (height * width) - 0.05 and max(fractions) <= 1 - keep / (height * width)
    assert attempts < 1.05 * DRAWS   # the context rarely forces a redraw


class SeedMasks(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return multiblock_masks(VIEWS, GRID, [1000 + i])


def test_the_same_seed_gives_the_same_mask_in_any_worker():
    here = multiblock_masks(VIEWS, GRID, [1000 + i for i in range(16)])          # (V, B, N)
    loader = torch.utils.data.DataLoader(SeedMasks(), batch_size=None, num_workers=2)
    there = torch.stack(list(loader), dim=1)[:, :, 0]
    assert torch.equal(here, there)
    assert not torch.equal(here[:, 0], here[:, 1]) and not torch.equal(here[0], here[1])   # clips and views differ


def clip_batch(seeds, frames=8, size=32):
    video = torch.randint(0, 256, (len(seeds), 3, frames, size, size), generator=torch.Generator().manual_seed(1),
                          dtype=torch.uint8)
    return {"video": video, "size": len(seeds), "clip_seeds": list(seeds)}


def test_student_starts_from_the_stage1_export_and_the_teacher_never_moves(stage1):
    from safetensors.torch import load_file

    obj = objective(stage1)
    encoder = load_file(str(stage1 / "encoder.safetensors"))
    student = obj.trainable.encoder.state_dict()
    assert torch.equal(student["blocks.1.mlp.fc1.weight"], encoder["blocks.1.mlp.fc1.weight"])
    assert student["pos_embed"].shape[1] == 4 + 8 * 16 and encoder["pos_embed"].shape[1] == 4 + 4 * 16
    predictor = load_file(str(stage1 / "predictor.safetensors"))
    assert torch.equal(obj.trainable.predictor.bert.layers[0].mlp.Wi.weight, predictor["bert.layers.0.mlp.Wi.weight"])
    before = {k: v.clone() for k, v in obj.teacher.state_dict().items()}
    assert all(not p.requires_grad for p in obj.teacher.parameters()) and not obj.teacher.training
    teacher_ids = {id(p) for p in obj.teacher.parameters()}
    groups = obj.param_groups(obj.recipe.optim, 1e-2)
    assert not teacher_ids & {id(p) for g in groups for p in g["params"]}
    assert not any(k.startswith("teacher") or "ema" in k for k in obj.trainable.state_dict())
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    for step in range(3):
        batch = clip_batch([step * 2, step * 2 + 1])
        batch["masks"] = multiblock_masks(obj.views, obj.grid, batch["clip_seeds"])
        inputs = obj.prepare(batch)
        assert inputs["visible"].shape == (2, 2, 8 * 16) and inputs["targets"].shape == (2, 8 * 16, 64)
        loss, metrics = obj.trainable(**inputs)
        assert set(metrics) == {"loss/view0", "loss/view1"} and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in obj.teacher.parameters())
        assert obj.trainable.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        assert obj.trainable.predictor.bert.layers[0].mlp.Wi.weight.grad.abs().sum() > 0
        optimizer.step()
    assert not torch.equal(obj.trainable.encoder.blocks[0].attn.qkv.weight, encoder["blocks.0.attn.qkv.weight"])
    after = obj.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # bitwise


def test_smooth_l1_and_the_ema_ablation(stage1):
    obj = objective(stage1, "next_stage2.loss.type=smooth_l1", "next_stage2.teacher_momentum=0.5")
    assert not list(obj.teacher.parameters()) and any(k.startswith("ema_teacher.") for k in obj.trainable.state_dict())
    batch = clip_batch([3, 4])
    batch["masks"] = multiblock_masks(obj.views, obj.grid, batch["clip_seeds"])
    optimizer = torch.optim.AdamW(obj.param_groups(obj.recipe.optim, 1e-2), lr=1e-2)
    loss, _ = obj.trainable(**obj.prepare(batch))
    loss.backward()
    optimizer.step()
    teacher = obj.teacher.blocks[0].attn.qkv.weight.clone()
    student = obj.trainable.encoder.blocks[0].attn.qkv.weight.detach()
    obj.trainable.train()   # as the engine does: the EMA teacher rides inside, yet runs without stochastic depth
    obj.prepare(batch)   # the next step's teacher: halfway to the student
    assert torch.allclose(obj.teacher.blocks[0].attn.qkv.weight, 0.5 * teacher + 0.5 * student)
    assert not obj.teacher.training and obj.trainable.encoder.training
    assert "ema_teacher" not in str(obj.export(obj.trainable.state_dict()).keys())


@pytest.mark.parametrize("override, said", [("model.embed_dim=48", "48 wide with patch 8"),
                                            ("model.patch_size=16", "64 wide with patch 16")])
def test_a_stage1_export_of_another_width_or_patch_is_refused_naming_both(assets, tmp_path, override, said):
    other = write_stage1_run(tmp_path / "s1", assets, f"next_stage1.{override}",
                             *(["data.image_size=64"] if "patch" in override else []))   # the teacher's 4 x 4 grid
    with pytest.raises(ValueError) as e:
        objective(other)
    message = str(e.value)
    assert "\n" not in message and f"its encoder is {said}" in message and "the recipe's is 64 wide with patch 8" \
        in message
