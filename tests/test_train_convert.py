"""Checkpoint conversion to and from the released InternVideo2 layouts, strict, with a shape report."""
import pytest
import torch

torch.set_num_threads(1)

from ivtrain.models.vit import ViTConfig  # noqa: E402
from ivtrain.convert import (ConversionError, detect_layout, export_released, from_ivkit,  # noqa: E402
                             load_checkpoint, load_released, to_ivkit)
from ivtrain.models.vit import InternVideo2  # noqa: E402
from ivtrain.objectives.iv2_stage1 import Stage1Student  # noqa: E402


def student(seed=0, cfg=None, sem=(48, 2), pooled=32, mot=(40, 2)):
    torch.manual_seed(seed)
    enc = InternVideo2(cfg or ViTConfig(size="tiny"), pool_out_dim=pooled)
    return Stage1Student(enc, sem[0], sem[1], pooled, mot[0], mot[1], (1.0, 1.0, 1.0))


def released_1b_shapes(clip_layers=6, teacher_dim=3200, clip_dim=768, mae_dim=1408, mae_layers=6):
    """The stage-1 pretrain.pth keys and shapes of InternVideo2-1B (patch 14, 224 px, 8 frames)."""
    d, mlp, n = 1408, 6144, 8 * 16 * 16
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, n + 1, d), "clip_pos_embed": (1, n + 1, d),
              "mae_pos_embed": (1, n, d), "patch_embed.proj.weight": (d, 3, 1, 14, 14), "patch_embed.proj.bias": (d,)}
    for i in range(40):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (d,), b + "attn.qkv.weight": (3 * d, d), b + "attn.q_norm.weight": (d,),
                       b + "attn.k_norm.weight": (d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "ls1.gamma": (d,), b + "norm2.weight": (d,), b + "mlp.fc1.weight": (mlp, d),
                       b + "mlp.fc1.bias": (mlp,), b + "mlp.fc2.weight": (d, mlp), b + "mlp.fc2.bias": (d,),
                       b + "ls2.gamma": (d,)})
    p = "clip_projector."
    for x in "qkv":
        shapes.update({p + f"norm1_{x}.weight": (d,), p + f"norm1_{x}.bias": (d,),
                       p + f"cross_attn.{x}.weight": (d, d), p + f"cross_attn.{x}_bias": (d,)})
    shapes.update({p + "cross_attn.proj.weight": (clip_dim, d), p + "cross_attn.proj.bias": (clip_dim,)})
    for j in range(clip_layers):
        shapes.update({f"clip_decoder.{j}.head.weight": (teacher_dim, d), f"clip_decoder.{j}.head.bias": (teacher_dim,),
                       f"clip_decoder.{j}.norm.weight": (teacher_dim,), f"clip_decoder.{j}.norm.bias": (teacher_dim,)})
    shapes.update({"final_clip_decoder.head.weight": (clip_dim, clip_dim), "final_clip_decoder.head.bias": (clip_dim,),
                   "final_clip_decoder.norm.weight": (clip_dim,), "final_clip_decoder.norm.bias": (clip_dim,)})
    for j in range(mae_layers):
        m = f"mae_decoder.{j}."
        shapes.update({m + "head.0.weight": (d, d), m + "head.0.bias": (d,), m + "head.2.weight": (mae_dim, d),
                       m + "head.2.bias": (mae_dim,), m + "norm.weight": (mae_dim,), m + "norm.bias": (mae_dim,)})
    return shapes


def test_1b_model_has_exactly_the_released_stage1_keys_and_shapes():
    with torch.device("meta"):
        model = student(cfg=ViTConfig(size="1b"), sem=(3200, 6), pooled=768, mot=(1408, 6))
    ours = from_ivkit({k: v for k, v in model.state_dict().items()}, "stage1")
    released = released_1b_shapes()
    assert set(ours) == set(released)
    assert {k: tuple(v.shape) for k, v in ours.items()} == released


def test_stage1_round_trip_is_exact(tmp_path):
    a, b = student(seed=0), student(seed=1)
    path = export_released(a, "stage1", tmp_path / "pretrain.pth")
    sd = load_checkpoint(path)
    assert detect_layout(sd) == "stage1" and "blocks.0.attn.qkv.weight" in sd and "clip_decoder.1.norm.bias" in sd
    report = load_released(b, sd)
    assert report.ok and report.matched == len(b.state_dict())
    video = torch.randn(1, 3, 4, 32, 32)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a.encoder(video).tokens, b.encoder(video).tokens, rtol=0, atol=0)


def test_stage2_vision_encoder_loads_into_an_encoder():
    a = student(seed=0)
    sd = from_ivkit(a.state_dict(), "stage2")
    sd["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(10, 4)  # another tower: unused here
    assert detect_layout(sd) == "stage2" and all(k.startswith(("vision_encoder.", "text_")) for k in sd)
    torch.manual_seed(3)
    enc = InternVideo2(ViTConfig(size="tiny"), pool_out_dim=32)
    report = load_released(enc, sd, encoder_only=True)
    assert report.ok and "text_encoder.embeddings.word_embeddings.weight" in report.unused
    assert torch.equal(enc.blocks[2].mlp.fc1.weight, a.encoder.blocks[2].mlp.fc1.weight)


def test_strict_loading_reports_every_problem():
    a = student()
    sd = from_ivkit(a.state_dict(), "stage1")
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(10, 10)
    del sd["blocks.3.ls2.gamma"]
    sd["blocks.9.surprise"] = torch.zeros(1)
    with pytest.raises(ConversionError) as err:
        load_released(student(seed=1), sd)
    text = str(err.value)
    assert "shape mismatch blocks.0.attn.qkv.weight: checkpoint [10, 10] vs model [192, 64]" not in text  # named in ivkit form
    assert "shape mismatch encoder.blocks.0.attn.qkv.weight: checkpoint [10, 10] vs model [192, 64]" in text
    assert "missing from checkpoint: encoder.blocks.3.ls2.gamma" in text
    assert "not in model: encoder.blocks.9.surprise" in text


def test_wrapped_and_ddp_checkpoints_unwrap(tmp_path):
    a = student()
    sd = {"module." + k: v for k, v in from_ivkit(a.state_dict(), "stage1").items()}
    torch.save({"module": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = load_checkpoint(tmp_path / "ckpt.pth")
    assert "blocks.0.norm1.weight" in loaded
    assert to_ivkit(loaded)[0].keys() == a.state_dict().keys()
