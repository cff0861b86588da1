"""InternVideo-Next stage 1 as an objective, with its tiny teacher and predictor: what it computes, and the faults of
the released code it does not have (each alignment head reads its own layer; every token grid follows the input
size; the entry points import what they use)."""
import builtins
import importlib
import inspect
import symtable

import pytest
import torch

from ivtrain.config import load_recipe
from ivtrain.data.masking import clip_generator
from ivtrain.models.patches import patchify, unpatchify
from ivtrain.models.pos_embed import sincos_3d
from ivtrain.models.siglip_teacher import SiglipTeacher, teacher_layers
from ivtrain.models.vit import InternVideo2, encoder_from_config
from ivtrain.objectives.next_stage1 import NextStage1, NextViTConfig
from ivtrain.tiny_teachers import save_tiny_siglip_teacher

torch.set_num_threads(1)
RECIPE = "recipes/next_stage1_tiny.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    NextStage1.write_tiny_assets(out)
    return out


def objective(assets, *overrides):
    recipe = load_recipe(RECIPE, [f"assets={assets}", "data.shards=unused.wids.json", *overrides])
    torch.manual_seed(0)
    return NextStage1(recipe, torch.device("cpu"))


def batch_of(clips: int, seeds, frames: int = 4, size: int = 32):
    video = torch.randint(0, 256, (clips, 3, frames, size, size), generator=torch.Generator().manual_seed(1),
                          dtype=torch.uint8)
    return {"video": video, "size": clips, "clip_seeds": list(seeds)}


def test_a_step_computes_every_loss_and_trains_every_part(assets):
    obj = objective(assets)
    inputs = obj.prepare(batch_of(2, [11, 12]))
    b, n = inputs["visible"].shape
    assert (b, n) == (2, 4 * 16) and int(inputs["visible"].sum(1)[0]) == 4 * 4     # 75 % of each frame hidden
    assert inputs["align_targets"].shape == (2, 2, 16, 48) and inputs["pooled"].shape == (2, 48)
    # 48 hidden patches a clip, each diffused 4 times (decoder.batch_mul)
    assert inputs["timesteps"].shape == (2, 4 * 48) and inputs["noise"].shape == (2, 4 * 48, 3 * 8 * 8)
    # the decoder's adaLN and output layers start at zero (no gradient reaches the predictor through them then):
    # move them, as the first updates do
    for name, p in obj.trainable.decoder.named_parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    loss, metrics = obj.trainable(**inputs)
    assert set(metrics) == {"loss/align", "loss/pooled", "loss/diffusion", "loss/diffusion_mse", "loss/diffusion_vb"}
    loss.backward()
    for part in ("encoder.patch_embed.norm_before", "encoder.cls_token", "clip_decoder.1", "final_clip_decoder",
                 "predictor.mask_token", "predictor.bert.layers.0", "decoder.net.final_layer"):
        grads = [p.grad for name, p in obj.trainable.named_parameters() if name.startswith(part)]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part
    flops = obj.flops({"size": 2})
    assert set(flops) == {"encoder", "predictor", "decoder", "teacher"} and all(v > 0 for v in flops.values())


def test_alignment_only_builds_no_predictor_or_decoder(assets):
    obj = objective(assets, "next_stage1.loss.diffusion_weight=0", "next_stage1.predictor.path=/no/such/dir")
    assert obj.trainable.predictor is None and obj.trainable.decoder is None
    inputs = obj.prepare(batch_of(2, [1, 2]))
    assert "noise" not in inputs
    _, metrics = obj.trainable(**inputs)
    assert set(metrics) == {"loss/align", "loss/pooled"}


def test_each_alignment_head_reads_its_own_layer(assets):
    """The release's loop hands every head the stale block index of its last loop; here head k reads the k-th of
    the last K layers."""
    obj = objective(assets)
    student = obj.trainable
    inputs = obj.prepare(batch_of(2, [3, 4]))
    visible = inputs["visible"]
    out = student.encoder(inputs["video"], visible, return_layers=student.align_index)
    assert student.align_index == (2, 3)
    got = student.aligned(out.layers, visible)
    cls = student.encoder.num_cls
    pos = student.clip_pos_embed[:, cls:].expand(2, -1, -1)[visible].reshape(2, -1, 64)
    for k, (head, layer) in enumerate(zip(student.clip_decoder, student.align_index)):
        assert torch.equal(got[k], head(out.layers[layer][:, cls:] + pos))
    stale = student.clip_decoder[0](out.layers[student.align_index[-1]][:, cls:] + pos)
    assert not torch.allclose(got[0], stale)


def test_token_grids_follow_the_input_size():
    """At 224 px and patch 14 the grid is 16 x 16 (the release's RoPE assumed 14 x 14): the encoder's position table,
    the predictor's and the heads' are laid out on it; its token k is the patch at (t, h, w) = unravel(k); the
    pixel targets take the same order; a teacher whose grid differs is refused."""
    cfg = NextViTConfig(size="tiny", img_size=224, patch_size=14, num_frames=2, embed_dim=32, depth=1, num_heads=2,
                        mlp_dim=32, pool_heads=2)
    encoder = InternVideo2(cfg)
    assert encoder.grid == (2, 16, 16) and encoder.pos_embed.shape == (1, 4 + 2 * 256, 32)
    assert torch.equal(encoder.pos_embed[0], sincos_3d(32, 2, 16, 16, cls_token=4))
    # pixel patches: a clip whose every 14 x 14 cell holds its own token index
    index = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(1, 1, 2, 16, 1, 16, 1)
    video = index.expand(1, 3, 2, 16, 14, 16, 14).reshape(1, 3, 2, 224, 224)
    for order in ("cthw", "thwc"):
        patches = patchify(video, 14, order=order)
        assert patches.shape == (1, 512, 3 * 14 * 14)
        assert torch.equal(patches[0, :, 0], torch.arange(512.0)) and torch.equal(patches.amin(-1), patches.amax(-1))
        assert torch.equal(unpatchify(patches, (2, 16, 16), 14, order=order), video)
    # the encoder's token k is that patch: with a projection that averages the pixels, token k reads k
    embed = InternVideo2(NextViTConfig(**{**cfg.__dict__, "patch_norm": False})).patch_embed
    with torch.no_grad():
        embed.proj.weight.fill_(1.0 / (3 * 14 * 14))
        embed.proj.bias.zero_()
        assert torch.allclose(embed(video)[0, :, 0], torch.arange(512.0), atol=1e-3)
    # the normalized patch embedding: each patch RMS-normalized (time, row, column, channel order), then the same
    # Conv3d kernel, then the embedding RMS-normalized
    normed = InternVideo2(cfg).patch_embed
    clip = torch.randn(1, 3, 2, 224, 224, generator=torch.Generator().manual_seed(0))
    cells = patchify(clip, 14, order="thwc")
    cells = cells * torch.rsqrt(cells.pow(2).mean(-1, keepdim=True) + 1e-6)
    conv = torch.nn.functional.conv3d(unpatchify(cells, (2, 16, 16), 14, order="thwc"), normed.proj.weight,
                                      normed.proj.bias, stride=(1, 14, 14)).flatten(2).transpose(1, 2)
    want = conv * torch.rsqrt(conv.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(normed(clip), want, atol=1e-4)


def test_the_teacher_runs_on_the_students_grid(tmp_path):
    """SigLIP at 64 px / patch 16 serves a 4 x 4 student grid (32 px / patch 8); at 48 px it would not."""
    teacher = SiglipTeacher(save_tiny_siglip_teacher(tmp_path / "siglip"), count=2)
    assert teacher.size_for(4) == 64
    with pytest.raises(ValueError, match="differs from the student's 3 x 3"):
        teacher.size_for(3)
    frames = torch.randn(2, 3, 4, 32, 32)
    out = teacher(frames, 4)
    assert out.layers.shape == (2, 2, 4, 16, 48) and out.attention.shape == (2, 4, 16)
    assert torch.allclose(out.attention.sum(-1), torch.ones(2, 4), atol=1e-5)
    # the pooled target is the MAP head's output (transformers' pooler_output), normalized per frame, then averaged
    images = torch.nn.functional.interpolate(teacher.input_norm(frames).transpose(1, 2).reshape(8, 3, 32, 32),
                                             size=(64, 64), mode="bicubic", align_corners=False)
    reference = teacher.tower(pixel_values=images, output_hidden_states=True)
    want = torch.nn.functional.normalize(reference.pooler_output, dim=-1).reshape(2, 4, -1).mean(1)
    assert torch.allclose(out.pooled, want, atol=1e-5)
    # the targets are the inputs of the tapped layers: hidden_states[i] enters layer i
    assert teacher.layer_index == (2, 3)
    assert torch.allclose(out.layers[1], reference.hidden_states[3].reshape(2, 4, 16, 48), atol=1e-5)
    assert teacher_layers(40, 6, 3.33) == (23, 26, 30, 33, 36, 39)    # SigLIP2-1B as the B recipe taps it


def test_diffusion_draws_follow_each_clips_seed(assets):
    """A clip's mask, timesteps and noise come from its seed: the same in any batch, at any position."""
    obj = objective(assets)
    a = obj.prepare(batch_of(2, [5, 6]))
    swapped = batch_of(2, [6, 5])
    swapped["video"] = swapped["video"].flip(0)
    b = obj.prepare(swapped)
    for key in ("visible", "timesteps", "noise"):
        assert torch.equal(a[key][0], b[key][1]) and torch.equal(a[key][1], b[key][0]), key
    assert not torch.equal(a["noise"][0], a["noise"][1])
    # the diffusion draws come from a stream of their own, not from the one the mask drew from
    same_stream = torch.randint(0, 1000, (4 * 48,), generator=clip_generator(5))
    assert torch.equal(a["timesteps"][0], torch.randint(0, 1000, (4 * 48,), generator=clip_generator(5, 1)))
    assert not torch.equal(a["timesteps"][0], same_stream)


def test_export_round_trips_and_the_encoder_rebuilds_for_evaluations(assets):
    obj = objective(assets)
    artifacts = obj.export(obj.trainable.state_dict())
    assert set(artifacts) == {"encoder", "predictor", "decoder", "heads"}
    assert "clip_pos_embed" in artifacts["heads"] and "mask_token" in artifacts["predictor"]
    other = objective(assets)
    other.load_export(artifacts)
    for k, v in other.trainable.state_dict().items():
        assert torch.equal(v, obj.trainable.state_dict()[k]), k
    config = obj.encoder_config()
    assert config["cls_tokens"] == 4 and config["patch_norm"] is True
    assert config == {**NextStage1.encoder_config_of(obj.recipe), "pool_out_dim": config["pool_out_dim"]}
    rebuilt = encoder_from_config(config)
    rebuilt.load_state_dict(artifacts["encoder"], strict=True)


def undefined_globals(module) -> set[str]:
    """Names that some function or the module body reads as globals but that the module never defines or imports
    (a missing import shows up only when that code runs)."""
    table = symtable.symtable(inspect.getsource(module), module.__file__, "exec")
    defined = set(vars(module)) | set(vars(builtins))
    missing, todo = set(), [table]
    while todo:
        scope = todo.pop()
        todo.extend(scope.get_children())
        for sym in scope.get_symbols():
            if sym.is_referenced() and (sym.is_global() or scope is table) and not sym.is_imported() \
                    and sym.get_name() not in defined:
                missing.add(sym.get_name())
    return missing


@pytest.mark.parametrize("name", ["ivtrain.objectives.next_stage1", "ivtrain.models.predictor",
                                  "ivtrain.models.diffusion", "ivtrain.models.denoiser",
                                  "ivtrain.models.siglip_teacher", "ivtrain.eval.recon", "ivtrain.cli",
                                  "ivtrain.eval.cli", "ivtrain.train", "cli"])
def test_entry_points_and_the_modules_they_run_import_what_they_use(name):
    assert undefined_globals(importlib.import_module(name)) == set()


def test_the_import_check_finds_a_missing_import(tmp_path, monkeypatch):
    """What the check above would say of an entry point that, like the release's, uses a name it never imports."""
    (tmp_path / "broken_entry.py").write_text("import os\n\n\ndef main():\n    return os.getcwd(), json.dumps({})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undefined_globals(importlib.import_module("broken_entry")) == {"json"}


def test_a_siglip2_teacher_runs_at_the_students_grid(tmp_path):
    """SigLIP2 (any resolution) takes the student's grid at its own patch: its patches are laid out as its image
    processor lays them out (row-major, each patch row, column, channel), and its position table is resized to it."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    torch.manual_seed(0)
    config = Siglip2VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                 patch_size=16, num_patches=64)
    Siglip2VisionModel(config).save_pretrained(tmp_path / "siglip2")
    teacher = SiglipTeacher(tmp_path / "siglip2", count=2)
    assert teacher.image_size is None and teacher.size_for(4) == 64 and teacher.size_for(6) == 96
    frames = torch.randn(1, 3, 2, 32, 32)
    out = teacher(frames, 4)
    assert out.layers.shape == (2, 1, 2, 16, 48) and out.attention.shape == (1, 2, 16)
    images = torch.nn.functional.interpolate(teacher.input_norm(frames).transpose(1, 2).reshape(2, 3, 32, 32),
                                             size=(64, 64), mode="bicubic", align_corners=False)
    patches = torch.stack([torch.from_numpy(convert_image_to_patches(image.numpy(), 16)) for image in images])
    reference = teacher.tower(pixel_values=patches, pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
                              spatial_shapes=torch.tensor([[4, 4], [4, 4]]), output_hidden_states=True)
    want = torch.nn.functional.normalize(reference.pooler_output, dim=-1).mean(0, keepdim=True)
    assert torch.allclose(out.pooled, want, atol=1e-5)
    assert torch.allclose(out.layers[0, 0], reference.hidden_states[1], atol=1e-5)
