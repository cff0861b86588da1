"""Teacher directories from the released InternVL-C and VideoMAE V2-g checkpoints: strict conversion at the
documented full shapes (on the meta device, nothing allocated), the converted teachers computing what the
released modules compute (at a small width, same structure), and `iv convert-teacher` directories plugging
into the stage-1 objective."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

torch.set_num_threads(1)  # 2 shared cores: a second intra-op thread only contends

from cli import app  # noqa: E402
from ivtrain.config import load_recipe  # noqa: E402
from ivtrain.data.masking import make_mask, visible_per_frame  # noqa: E402
from ivtrain.data.transforms import normalize  # noqa: E402
from ivtrain.models.internvit import InternViTArch, InternViTSemanticTeacher, convert_internvl_c  # noqa: E402
from ivtrain.models.released_teachers import IMAGENET_MEAN, IMAGENET_STD, write_teacher  # noqa: E402
from ivtrain.models.videomae_v2 import VideoMAEV2Arch, convert_videomae_v2, fold_layer_scale  # noqa: E402
from ivtrain.models.teachers import MotionTeacher, load_semantic_teacher  # noqa: E402

IMAGENET = (list(IMAGENET_MEAN), list(IMAGENET_STD))
# the released structure at test scale: 16 pooling heads over a 64-wide tower with 4 block heads; the grid of
# recipes/iv2_stage1_tiny.yaml (32 px, patch 8; the motion teacher on 8 frames, tubelet 2)
SMALL_VIT = InternViTArch(image_size=32, patch_size=8, dim=64, depth=3, heads=4, mlp_dim=256, pool_heads=16,
                          pool_out_dim=48)
SMALL_MAE = VideoMAEV2Arch(image_size=32, patch_size=8, num_frames=8, dim=48, depth=3, heads=4, mlp_dim=96)
TEXT_KEYS = {"text_projection": (4096, 768), "logit_scale": (), "qllama.model.embed_tokens.weight": (32, 4096)}
DECODER_KEYS = {"decoder.blocks.0.norm1.weight": (512,), "decoder.head.weight": (1176, 512),
                "encoder_to_decoder.weight": (512, 1408), "mask_token": (1, 1, 512)}


# ------------------------------------------------------------------ the released layouts, written out by hand

def internvl_c_shapes(a: InternViTArch) -> dict[str, tuple]:
    """Keys and shapes of InternVL-C's vision tower + clip_projector as released (InternViT's Conv2d patch kernel,
    no qkv bias, RMSNorm and QK-norm weights, LayerScale gammas, a learned position table with a CLS slot)."""
    d, n = a.dim, (a.image_size // a.patch_size) ** 2
    shapes = {"patch_embed.proj.weight": (d, 3, a.patch_size, a.patch_size), "patch_embed.proj.bias": (d,),
              "pos_embed": (1, n + 1, d), "cls_token": (1, 1, d)}
    for i in range(a.depth):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (d,), p + "attn.qkv.weight": (3 * d, d), p + "attn.q_norm.weight": (d,),
                       p + "attn.k_norm.weight": (d,), p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                       p + "ls1.gamma": (d,), p + "norm2.weight": (d,), p + "mlp.fc1.weight": (a.mlp_dim, d),
                       p + "mlp.fc1.bias": (a.mlp_dim,), p + "mlp.fc2.weight": (d, a.mlp_dim),
                       p + "mlp.fc2.bias": (d,), p + "ls2.gamma": (d,)})
    p = "clip_projector."
    for norm in ("norm1_q", "norm1_k", "norm1_v"):
        shapes.update({f"{p}{norm}.weight": (d,), f"{p}{norm}.bias": (d,)})
    for x in "qkv":
        shapes.update({f"{p}cross_attn.{x}.weight": (d, d), f"{p}cross_attn.{x}_bias": (d,)})
    shapes.update({p + "cross_attn.proj.weight": (a.pool_out_dim, d), p + "cross_attn.proj.bias": (a.pool_out_dim,)})
    return shapes


def videomae_v2_shapes(a: VideoMAEV2Arch, gammas: bool) -> dict[str, tuple]:
    """The VideoMAE V2 pretraining encoder as released (`encoder.` prefix, fused qkv with q/v biases)."""
    d, e = a.dim, "encoder."
    shapes = {e + "patch_embed.proj.weight": (d, 3, a.tubelet_size, a.patch_size, a.patch_size),
              e + "patch_embed.proj.bias": (d,), e + "norm.weight": (d,), e + "norm.bias": (d,)}
    for i in range(a.depth):
        p = f"{e}blocks.{i}."
        shapes.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "attn.qkv.weight": (3 * d, d),
                       p + "attn.q_bias": (d,), p + "attn.v_bias": (d,), p + "attn.proj.weight": (d, d),
                       p + "attn.proj.bias": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                       p + "mlp.fc1.weight": (a.mlp_dim, d), p + "mlp.fc1.bias": (a.mlp_dim,),
                       p + "mlp.fc2.weight": (d, a.mlp_dim), p + "mlp.fc2.bias": (d,)})
        if gammas:
            shapes.update({p + "gamma_1": (d,), p + "gamma_2": (d,)})
    return shapes


def random_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith(("gamma", "gamma_1", "gamma_2")):  # LayerScale: positive and far from 1, so a missed fold shows
            sd[k] = 0.2 + torch.rand(s, generator=g)
        elif "norm" in k and k.endswith(".weight"):
            sd[k] = 1.0 + 0.1 * torch.randn(s, generator=g)
        else:
            sd[k] = 0.2 * torch.randn(s, generator=g)
    return sd


def meta_state_dict(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# ------------------------------------------------------------------ the released forwards, written out by hand

def rms_norm(x, weight):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def heads_attention(q, k, v, heads):
    """Softmax attention of (B, Nq, C) against (B, Nk, C) -> (output (B, Nq, C), weights (B, heads, Nq, Nk))."""
    b, nq, c = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads)).softmax(-1)
    return (weights @ split(v)).transpose(1, 2).reshape(b, nq, c), weights


def internvit_by_hand(images, sd, a: InternViTArch):
    """InternViT blocks as released -> (every block's output, pooled, pooling attention averaged over heads)."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=a.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(len(x), -1, -1), x], dim=1) + sd["pos_embed"]
    outputs = []
    for i in range(a.depth):
        p = f"blocks.{i}."
        q, k, v = (rms_norm(x, sd[p + "norm1.weight"]) @ sd[p + "attn.qkv.weight"].T).chunk(3, dim=-1)
        q, k = rms_norm(q, sd[p + "attn.q_norm.weight"]), rms_norm(k, sd[p + "attn.k_norm.weight"])  # full width
        attn = heads_attention(q, k, v, a.heads)[0] @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        x = x + sd[p + "ls1.gamma"] * attn
        h = F.gelu(rms_norm(x, sd[p + "norm2.weight"]) @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"],
                   approximate="tanh")
        x = x + sd[p + "ls2.gamma"] * (h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"])
        outputs.append(x)
    pooled, weights = pooling_by_hand(x, sd, a.pool_heads)
    return outputs, pooled, weights


def pooling_by_hand(tokens, sd, heads):
    """clip_projector as released: the LayerNorm'd mean token queries the LayerNorm'd tokens (own biases)."""
    p = "clip_projector."
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"])  # noqa: E731
    q = ln(tokens.mean(1, keepdim=True), "norm1_q") @ sd[p + "cross_attn.q.weight"].T + sd[p + "cross_attn.q_bias"]
    k = ln(tokens, "norm1_k") @ sd[p + "cross_attn.k.weight"].T + sd[p + "cross_attn.k_bias"]
    v = ln(tokens, "norm1_v") @ sd[p + "cross_attn.v.weight"].T + sd[p + "cross_attn.v_bias"]
    out, weights = heads_attention(q, k, v, heads)
    pooled = out.squeeze(1) @ sd[p + "cross_attn.proj.weight"].T + sd[p + "cross_attn.proj.bias"]
    return pooled, weights.mean(1).squeeze(1)  # (N, out), (N, 1 + P)


def released_sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """VideoMAE's table: position / 10000^(2 floor(j/2) / dim), sine on even channels, cosine on odd ones."""
    j = np.arange(dim)
    angles = np.arange(n_position)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None]
    table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


def videomae_by_hand(video, sd, a: VideoMAEV2Arch):
    """The VideoMAE V2 encoder as released -> every block's output, the last one through the final norm."""
    e = lambda k: sd["encoder." + k]  # noqa: E731
    x = F.conv3d(video, e("patch_embed.proj.weight"), e("patch_embed.proj.bias"),
                 stride=(a.tubelet_size, a.patch_size, a.patch_size)).flatten(2).transpose(1, 2)
    x = x + released_sinusoid_table(x.shape[1], a.dim)
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], e(n + ".weight"), e(n + ".bias"), eps=1e-6)  # noqa: E731
    outputs = []
    for i in range(a.depth):
        p = f"blocks.{i}."
        qkv_bias = torch.cat([e(p + "attn.q_bias"), torch.zeros(a.dim), e(p + "attn.v_bias")])
        q, k, v = F.linear(ln(x, p + "norm1"), e(p + "attn.qkv.weight"), qkv_bias).chunk(3, dim=-1)
        attn = F.linear(heads_attention(q, k, v, a.heads)[0], e(p + "attn.proj.weight"), e(p + "attn.proj.bias"))
        x = x + (e(p + "gamma_1") * attn if "encoder." + p + "gamma_1" in sd else attn)
        mlp = F.linear(F.gelu(F.linear(ln(x, p + "norm2"), e(p + "mlp.fc1.weight"), e(p + "mlp.fc1.bias"))),
                       e(p + "mlp.fc2.weight"), e(p + "mlp.fc2.bias"))
        x = x + (e(p + "gamma_2") * mlp if "encoder." + p + "gamma_2" in sd else mlp)
        outputs.append(x)
    outputs[-1] = ln(outputs[-1], "norm")
    return outputs


# ------------------------------------------------------------------ the documented full shapes (meta device)

def test_released_internvl_c_vision_tower_converts_strictly_at_full_size():
    arch = InternViTArch()
    assert (arch.dim, arch.depth, arch.heads, arch.mlp_dim, arch.patch_size, arch.image_size,
            arch.pool_heads, arch.pool_out_dim) == (3200, 48, 25, 12800, 14, 224, 16, 768)
    shapes = internvl_c_shapes(arch)
    assert shapes["pos_embed"] == (1, 257, 3200)
    converted = convert_internvl_c(meta_state_dict({**shapes, **TEXT_KEYS}))
    report = converted.report
    print(report)
    assert report.ok and report.matched == len(shapes) == 4 + 48 * 13 + 14
    assert sorted(report.unused) == sorted(TEXT_KEYS)                     # the text tower, reported, not loaded
    assert converted.state_dict["patch_embed.proj.weight"].shape == (3200, 3, 1, 14, 14)  # Conv2d -> Conv3d
    assert "3 source keys outside this model" in str(report)
    # strict: a lost block key and a 1B-sized pooling output are named
    broken = meta_state_dict({**shapes, "clip_projector.cross_attn.proj.weight": (512, 3200)})
    del broken["blocks.47.ls2.gamma"]
    report = convert_internvl_c(broken).report
    assert not report.ok and report.missing == ["blocks.47.ls2.gamma"]
    assert report.mismatched == [("clip_projector.cross_attn.proj.weight", (512, 3200), (768, 3200))]


def test_released_videomae_v2_g_converts_strictly_at_full_size():
    arch = VideoMAEV2Arch()
    assert (arch.dim, arch.depth, arch.heads, arch.mlp_dim, arch.patch_size, arch.tubelet_size,
            arch.num_frames) == (1408, 40, 16, 6144, 14, 2, 16)
    shapes = videomae_v2_shapes(arch, gammas=False)
    converted = convert_videomae_v2(meta_state_dict({**shapes, **DECODER_KEYS}))
    print(converted.report)
    assert converted.report.ok and converted.report.matched == 2 + 40 * 15 + 2
    assert sorted(converted.report.unused) == sorted(DECODER_KEYS)        # the pretraining decoder
    # a checkpoint whose blocks carry LayerScale gammas converts to the same keys (they are folded)
    folded = convert_videomae_v2(meta_state_dict(videomae_v2_shapes(arch, gammas=True)))
    assert folded.report.ok and set(folded.state_dict) == set(converted.state_dict)
    # strict: a block key transformers' VideoMAE has no place for is named, not dropped
    extra = convert_videomae_v2(meta_state_dict({**shapes, "encoder.blocks.3.attn.scale": (16, 1, 1)})).report
    assert not extra.ok and extra.unexpected == ["encoder.layer.3.attn.scale"]


def test_transformers_videomae_position_table_is_the_released_one_at_the_released_grid():
    """16 frames / tubelet 2 x (224/14)^2 = 2048 positions: the grid upstream's table was made for, so upstream
    uses it as is; transformers computes its own table, which must be the same one."""
    from ivtrain.models.videomae_v2 import _videomae_target

    table = _videomae_target(VideoMAEV2Arch())[1]  # the built model's own table (cached: seconds to make)
    assert table.shape == (1, 2048, 1408)
    torch.testing.assert_close(table, released_sinusoid_table(2048, 1408), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ numbers, at a small width

@pytest.fixture(scope="module")
def small_internvl_c():
    return random_state_dict({**internvl_c_shapes(SMALL_VIT), **TEXT_KEYS}, seed=1)


def test_internvit_teacher_computes_the_released_layers_pooling_and_pooling_attention(tmp_path, small_internvl_c):
    sd = small_internvl_c
    converted = convert_internvl_c(sd, SMALL_VIT)
    assert converted.report.ok
    write_teacher(converted, tmp_path / "internvit", tmp_path / "internvl_c.pth")
    teacher = load_semantic_teacher(tmp_path / "internvit", 2, backend="internvit", data_norm=IMAGENET)
    assert isinstance(teacher, InternViTSemanticTeacher) and teacher.input_norm.identity
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, 32, 32)                              # (B, 3, T, H, W), ImageNet-normalized
    targets = teacher(frames)
    images = frames.transpose(1, 2).reshape(6, 3, 32, 32)
    with torch.no_grad():
        blocks, pooled, weights = internvit_by_hand(images, sd, SMALL_VIT)
    assert targets.layers.shape == (2, 2, 3, 17, 64)
    for got, want in zip(targets.layers, blocks[-2:]):                 # the last two blocks' outputs, per frame
        torch.testing.assert_close(got, want.reshape(2, 3, 17, 64), atol=1e-5, rtol=1e-5)
    # the mask map: the pooling head's 16-head-averaged attention from its mean-token query to the patch tokens
    torch.testing.assert_close(targets.cls_attention, weights[:, 1:].reshape(2, 3, 16), atol=1e-5, rtol=1e-5)
    # the pooled target: the pooling head's output, averaged over frames
    torch.testing.assert_close(targets.pooled, pooled.reshape(2, 3, 48).mean(1), atol=1e-5, rtol=1e-5)
    # what this replaces differs: the last block's CLS self-attention, or the pooling with the blocks' head count
    p = "blocks.2."
    q, k, v = (rms_norm(blocks[1], sd[p + "norm1.weight"]) @ sd[p + "attn.qkv.weight"].T).chunk(3, dim=-1)
    q, k = rms_norm(q, sd[p + "attn.q_norm.weight"]), rms_norm(k, sd[p + "attn.k_norm.weight"])
    cls_self = heads_attention(q, k, v, SMALL_VIT.heads)[1].mean(1)[:, 0, 1:]
    assert (cls_self.reshape(2, 3, 16) - targets.cls_attention).abs().max() > 1e-3
    assert (pooling_by_hand(blocks[-1], sd, 4)[1][:, 1:].reshape(2, 3, 16) - targets.cls_attention).abs().max() > 1e-3


def test_internvit_teacher_flops_match_torch_flop_counter(tmp_path, small_internvl_c):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    write_teacher(convert_internvl_c(small_internvl_c, SMALL_VIT), tmp_path / "t", tmp_path / "x.pth")
    teacher = InternViTSemanticTeacher(tmp_path / "t", 2)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as count:
        teacher(torch.randn(1, 3, 4, 32, 32))
    assert teacher.flops_per_sample(4) == pytest.approx(count.get_total_flops(), rel=0.01)  # one clip of 4 frames


def test_pooling_head_attention_weights_leave_its_output_unchanged():
    from ivtrain.models.vit import AttentionPooling

    torch.manual_seed(0)
    pool = AttentionPooling(64, 16, 48)
    tokens = torch.randn(3, 17, 64)
    pooled, weights = pool(tokens, return_attention=True)
    torch.testing.assert_close(pooled, pool(tokens), atol=1e-6, rtol=1e-6)
    assert weights.shape == (3, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))


def test_layer_scale_fold_equals_scaling_the_linear_output():
    torch.manual_seed(0)
    w, b, gamma, x = torch.randn(8, 5), torch.randn(8), torch.rand(8) + 0.1, torch.randn(4, 5)
    folded_w, folded_b = fold_layer_scale(w, b, gamma)
    torch.testing.assert_close(F.linear(x, folded_w, folded_b), gamma * F.linear(x, w, b), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(F.linear(x, folded_w, folded_b), F.linear(x, w, b))


@pytest.mark.parametrize("gammas", [False, True])
def test_converted_videomae_v2_dir_computes_the_released_encoder(tmp_path, gammas):
    sd = random_state_dict({**videomae_v2_shapes(SMALL_MAE, gammas), **DECODER_KEYS}, seed=2)
    converted = convert_videomae_v2(sd, SMALL_MAE)
    assert converted.report.ok, str(converted.report)
    write_teacher(converted, tmp_path / "videomae", tmp_path / "vit_g_hybrid_pt.pth")
    teacher = MotionTeacher(tmp_path / "videomae", num_layers=2, data_norm=IMAGENET)
    assert teacher.model.layernorm is not None and teacher.input_norm.identity
    torch.manual_seed(0)
    video = torch.randn(2, 3, 8, 32, 32)
    targets = teacher(video)
    with torch.no_grad():
        blocks = videomae_by_hand(video, sd, SMALL_MAE)
    torch.testing.assert_close(targets[0], blocks[-2], atol=1e-5, rtol=1e-5)    # a block's output
    torch.testing.assert_close(targets[1], blocks[-1], atol=1e-5, rtol=1e-5)    # through the final norm
    if gammas:  # the fold is what makes them equal: without the gammas the released encoder computes otherwise
        plain = {k: v for k, v in sd.items() if "gamma" not in k}
        assert (videomae_by_hand(video, plain, SMALL_MAE)[-2] - blocks[-2]).abs().max() > 1e-2


# ------------------------------------------------------------------ the CLI -> the stage-1 objective

def settings(arch, *names):
    return [a for n in names for a in ("--set", f"{n}={getattr(arch, n)}")]


VIT_SETTINGS = settings(SMALL_VIT, "image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "pool_out_dim")
MAE_SETTINGS = settings(SMALL_MAE, "image_size", "patch_size", "num_frames", "dim", "depth", "heads", "mlp_dim")


def test_convert_teacher_cli_dirs_drive_the_stage1_objective(tmp_path, small_internvl_c):
    from ivtrain.objectives.iv2_stage1 import IV2Stage1

    runner = CliRunner()
    torch.save({"module": small_internvl_c}, tmp_path / "internvl_c.pth")
    torch.save({"model": random_state_dict({**videomae_v2_shapes(SMALL_MAE, True), **DECODER_KEYS})},
               tmp_path / "videomae_v2.pth")
    res = runner.invoke(app, ["convert-teacher", str(tmp_path / "internvl_c.pth"), str(tmp_path / "sem"),
                              "--kind", "internvl-c", *VIT_SETTINGS])
    assert res.exit_code == 0, res.output
    assert f"{len(internvl_c_shapes(SMALL_VIT))} tensors match" in res.output and "3 source keys" in res.output
    res = runner.invoke(app, ["convert-teacher", str(tmp_path / "videomae_v2.pth"), str(tmp_path / "mot"),
                              "--kind", "videomae-v2", *MAE_SETTINGS])
    assert res.exit_code == 0, res.output

    recipe = load_recipe("recipes/iv2_stage1_tiny.yaml", [
        f"iv2_stage1.teachers.semantic.path={tmp_path / 'sem'}", "iv2_stage1.teachers.semantic.backend=internvit",
        f"iv2_stage1.teachers.motion.path={tmp_path / 'mot'}"])
    obj = IV2Stage1(recipe, torch.device("cpu"))
    assert isinstance(obj.semantic, InternViTSemanticTeacher)
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    inputs = obj.prepare({"video": clips, "clip_seeds": [5, 6]})
    nv = 4 * visible_per_frame(16, recipe.section.mask.ratio)
    assert inputs["semantic"].shape == (2, 2, 1 + nv, 64) and inputs["pooled"].shape == (2, 48)
    assert inputs["motion"].shape == (2, 2, nv, 48)
    # the mask is drawn from the pooling head's attention map
    student = normalize(clips, recipe.data.mean, recipe.data.std)[:, :, ::2]
    sem = obj.semantic(student)
    assert torch.equal(inputs["visible"], make_mask("attention", recipe.section.mask.ratio, 2, 4, 16,
                                                    cls_attention=sem.cls_attention, seeds=[5, 6]))
    torch.testing.assert_close(inputs["pooled"], sem.pooled)
    loss, _ = obj.trainable(**inputs)
    assert torch.isfinite(loss)


def test_convert_teacher_cli_refuses_what_does_not_fit_in_one_line(tmp_path, small_internvl_c):
    runner = CliRunner()
    src = tmp_path / "internvl_c.pth"
    torch.save({"module": small_internvl_c}, src)
    # the small checkpoint against the released InternViT-6B shapes
    res = runner.invoke(app, ["convert-teacher", str(src), str(tmp_path / "out"), "--kind", "internvl-c"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "does not fit internvl-c" in res.output
    assert "shape mismatch" in res.output and not (tmp_path / "out").exists()
    # a VideoMAE file given as InternVL-C: nothing of the tower is there
    torch.save({"model": random_state_dict(videomae_v2_shapes(SMALL_MAE, False))}, tmp_path / "mae.pth")
    res = runner.invoke(app, ["convert-teacher", str(tmp_path / "mae.pth"), str(tmp_path / "out"),
                              "--kind", "internvl-c", *VIT_SETTINGS])
    assert res.exit_code == 2 and "missing" in res.output and len(res.output.strip().splitlines()) == 1
    for bad in (["--kind", "clip"], ["--kind", "internvl-c", "--set", "width=3"],
                ["--kind", "internvl-c", "--set", "dim=wide"], ["--kind", "internvl-c", "--set", "depth=0"],
                ["--kind", "internvl-c", "--set", "mlp_act=relu"]):
        res = runner.invoke(app, ["convert-teacher", str(src), str(tmp_path / "out"), *bad])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["convert-teacher", str(tmp_path / "junk.pth"), str(tmp_path / "out"),
                              "--kind", "internvl-c"])
    assert res.exit_code == 2 and "cannot read a checkpoint" in res.output
    # an output directory with something in it is left alone
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["convert-teacher", str(src), str(tmp_path / "taken"), "--kind", "internvl-c",
                              *VIT_SETTINGS])
    assert res.exit_code == 2 and "not an empty directory" in res.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
