"""Masking, the 2-2cos losses and the InternVideo2 stage-1 objective with real (tiny) teachers."""
import pytest
import torch

# 2 shared cores: a second intra-op thread only contends (tiny models run ~15x faster on one)
torch.set_num_threads(1)

from ivtrain.config import load_recipe
from ivtrain.data.masking import (attention_guided_mask, clip_noise, make_mask, random_mask, tube_mask,
                                  visible_per_frame)
from ivtrain.data.transforms import normalize
from ivtrain.models.heads import cosine_distance
from ivtrain.objectives.iv2_stage1 import IV2Stage1
from ivtrain.tiny_teachers import save_tiny_clip_teacher, save_tiny_videomae_teacher


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return save_tiny_clip_teacher(root / "clip"), save_tiny_videomae_teacher(root / "videomae")


def recipe(teachers, *extra):
    clip, videomae = teachers
    return load_recipe("recipes/iv2_stage1_tiny.yaml", [f"iv2_stage1.teachers.semantic.path={clip}",
                                                        f"iv2_stage1.teachers.motion.path={videomae}", *extra])


def test_mask_counts_per_frame():
    attn = torch.rand(3, 4, 16)
    for visible in (attention_guided_mask(attn, 0.75), tube_mask(3, 4, 16, 0.75), random_mask(3, 4, 16, 0.75)):
        assert visible.shape == (3, 64) and visible.dtype == torch.bool
        assert torch.all(visible.sum(1) == 4 * visible_per_frame(16, 0.75))
    per_frame = attention_guided_mask(attn, 0.75).reshape(3, 4, 16).sum(-1)
    assert torch.all(per_frame == 4)
    tube = tube_mask(3, 4, 16, 0.75).reshape(3, 4, 16)
    assert torch.all(tube == tube[:, :1])  # the same patches in every frame


def test_attention_guided_mask_samples_in_proportion_not_top_k():
    torch.manual_seed(0)
    weights = torch.ones(1, 1, 16)
    weights[..., :4] = 20.0  # four patches the teacher attends to strongly
    counts = torch.zeros(16)
    for _ in range(400):
        counts += attention_guided_mask(weights, 0.75)[0].float()
    assert counts[:4].mean() > 3 * counts[4:].mean()   # favoured in proportion to attention ...
    assert counts[4:].sum() > 0                         # ... yet not top-k: others are drawn too


def test_gumbel_top_k_draws_as_sequential_sampling_without_replacement():
    """Inclusion probabilities of 2 draws from 4 weighted patches, against the exact sequential-draw values."""
    w = torch.tensor([8.0, 4.0, 2.0, 1.0])
    total = w.sum()
    exact = torch.stack([w[i] / total + sum(w[j] / total * w[i] / (total - w[j]) for j in range(4) if j != i)
                         for i in range(4)])
    trials = 20000
    noise = clip_noise(list(range(trials)), (1, 4))
    visible = attention_guided_mask(w.expand(trials, 1, 4), 0.5, noise)
    assert torch.all(visible.sum(1) == 2)
    assert torch.allclose(visible.float().mean(0), exact, atol=0.015), (visible.float().mean(0), exact)


@pytest.mark.parametrize("kind", ["attention", "tube", "random"])
def test_a_clip_seed_gives_its_clip_the_same_mask_in_any_batch(kind):
    """The loader's per-clip seeds make a clip's mask independent of its batch-mates (and so of the world size)."""
    attn = torch.rand(3, 4, 16)
    together = make_mask(kind, 0.75, 3, 4, 16, attn, seeds=[11, 22, 33])
    alone = make_mask(kind, 0.75, 1, 4, 16, attn[1:2], seeds=[22])
    shuffled = make_mask(kind, 0.75, 2, 4, 16, attn[[2, 1]], seeds=[33, 22])
    assert torch.equal(together[1], alone[0]) and torch.equal(together[1], shuffled[1])
    assert torch.equal(together[2], shuffled[0]) and not torch.equal(together[0], together[1])
    assert torch.all(together.sum(1) == 4 * visible_per_frame(16, 0.75))


def test_cosine_distance():
    a = torch.randn(5, 8)
    assert cosine_distance(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distance(a, -a).item() == pytest.approx(4.0, abs=1e-5)


def test_teacher_targets_follow_the_mask(teachers):
    obj = IV2Stage1(recipe(teachers), torch.device("cpu"))
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)   # what the loader ships
    inputs = obj.prepare({"video": clips})
    assert inputs["video"].shape == (2, 3, 4, 32, 32)
    # the student sees every second frame, normalized with the recipe's mean and std
    d = obj.recipe.data
    assert torch.equal(inputs["video"], normalize(clips, d.mean, d.std)[:, :, ::2])
    assert inputs["video"][:, 0].mean().item() == pytest.approx((clips[:, 0, ::2].float().mean().item() / 255
                                                                 - d.mean[0]) / d.std[0], abs=1e-4)
    with pytest.raises(TypeError, match="uint8"):
        obj.prepare({"video": clips.float()})
    nv = 4 * visible_per_frame(16, 0.75)
    assert inputs["semantic"].shape == (2, 2, 1 + nv, 48) and inputs["motion"].shape == (2, 2, nv, 48)
    assert inputs["pooled"].shape == (2, 32)
    # motion targets are the teacher's full-video features gathered at the visible positions
    full = obj.motion(torch.randn(2, 3, 8, 32, 32))
    assert full.shape == (2, 2, 64, 48)
    assert all(not p.requires_grad for p in obj.semantic.parameters())
    assert all(not p.requires_grad for p in obj.motion.parameters())


def test_grid_mismatch_is_refused(teachers):
    with pytest.raises(ValueError, match="token grids differ|motion teacher expects"):
        IV2Stage1(recipe(teachers, "data.image_size=48"), torch.device("cpu"))


@pytest.mark.parametrize("mask", ["attention", "tube"])
def test_each_loss_term_falls_when_overfitting_one_batch(teachers, mask):
    obj = IV2Stage1(recipe(teachers, f"iv2_stage1.mask.type={mask}"), torch.device("cpu"))
    torch.manual_seed(0)
    batch = {"video": torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)}
    inputs = obj.prepare(batch)  # one fixed batch and mask
    opt = torch.optim.AdamW(obj.trainable.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        loss, metrics = obj.trainable(**inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in metrics.items()})
    for term in ("loss/semantic", "loss/pooled", "loss/motion"):
        first, last = history[0][term], history[-1][term]
        assert last < 0.5 * first, f"{term}: {first:.3f} -> {last:.3f}"


def test_teachers_convert_the_loader_normalization_to_their_own(tmp_path):
    """A teacher directory that says its mean/std (preprocessor_config.json) gets frames converted from the
    data's normalization; one that says nothing takes them as they are."""
    from transformers import CLIPImageProcessor

    from ivtrain.models.teachers import load_semantic_teacher

    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    plain = save_tiny_clip_teacher(tmp_path / "plain")
    assert load_semantic_teacher(plain, 1, data_norm=imagenet).input_norm.identity
    described = save_tiny_clip_teacher(tmp_path / "described")
    CLIPImageProcessor(image_mean=clip_mean, image_std=clip_std).save_pretrained(described)
    teacher = load_semantic_teacher(described, 1, data_norm=imagenet)
    raw = torch.rand(2, 3, 2, 4, 4)
    m, s = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in imagenet)
    cm, cs = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (clip_mean, clip_std))
    assert torch.allclose(teacher.input_norm((raw - m) / s), (raw - cm) / cs, atol=1e-6)
    teacher.to(torch.bfloat16)  # as on CUDA: the weights go to bf16, the conversion stays exact
    assert torch.allclose(teacher.input_norm((raw - m) / s), (raw - cm) / cs, atol=1e-6)


def test_bf16_teachers_give_fp32_targets_close_to_the_fp32_teachers(teachers):
    """iv2_stage1.teachers.dtype=bf16 (what `auto` picks on CUDA) on CPU: weights cast to bf16, inputs cast on the way
    in, targets handed to the fp32 loss as fp32, and close to what the fp32 teachers give."""
    fp32 = IV2Stage1(recipe(teachers, "iv2_stage1.teachers.dtype=fp32"), torch.device("cpu"))
    bf16 = IV2Stage1(recipe(teachers, "iv2_stage1.teachers.dtype=bf16"), torch.device("cpu"))
    assert {p.dtype for p in bf16.semantic.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.motion.parameters()} == {torch.bfloat16}
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    video = normalize(clips, fp32.recipe.data.mean, fp32.recipe.data.std)
    frames = video[:, :, ::2]
    ref, low = fp32.semantic(frames), bf16.semantic(frames)
    for a, b in ((ref.layers, low.layers), (ref.pooled, low.pooled), (ref.cls_attention, low.cls_attention)):
        assert b.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    m_ref, m_low = fp32.motion(video), bf16.motion(video)
    assert m_low.dtype == torch.float32 and not torch.equal(m_ref, m_low)   # it did run in bf16
    assert torch.nn.functional.cosine_similarity(m_ref.flatten(), m_low.flatten(), dim=0) > 0.99
    # and the student trains on them: one step of the objective in fp32 is finite
    inputs = bf16.prepare({"video": clips})
    loss, _ = bf16.trainable(**inputs)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_flop_count_matches_torch_flop_counter(teachers):
    """MFU rests on flops_per_sample: it must equal what torch's own counter sees run (matmuls and
    convolutions; the math SDPA kernel, whose matmuls the counter sees) for the student's forward (a third
    of its training FLOPs) and for both teachers, at two mask ratios."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    clips = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    for ratio in (0.75, 0.5):
        obj = IV2Stage1(recipe(teachers, f"iv2_stage1.mask.ratio={ratio}"), torch.device("cpu"))
        with sdpa_kernel(SDPBackend.MATH):
            with FlopCounterMode(display=False) as teacher_count:
                inputs = obj.prepare({"video": clips})
            with FlopCounterMode(display=False) as student_count:
                obj.trainable(**inputs)
        ours = obj.flops_per_sample()
        assert ours["student"] / 3 == pytest.approx(student_count.get_total_flops() / 2, rel=0.01), ratio
        assert ours["teachers"] == pytest.approx(teacher_count.get_total_flops() / 2, rel=0.01), ratio
