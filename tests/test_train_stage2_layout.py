"""The released stage-2 layout: the documented shapes of the 1B (f4) and 6B (audio) checkpoints, on synthetic state
dicts (meta tensors: nothing of that size is allocated); a strict load that names what does not fit; a tiny model's
round trip (export -> load strict -> the same outputs); a stage-1 export (ivkit's, and the released pretrain.pth
layout) initializing the vision tower with no missing or unexpected key."""
import sys
from pathlib import Path

import pytest
import torch

from ivtrain.convert import ConversionError, from_ivkit
from ivtrain.engine.distributed import DistContext
from ivtrain.models.audio import BEATs
from ivtrain.models.text import FusionBert
from ivtrain.models.vit import InternVideo2, ViTConfig
from ivtrain.objectives.iv2_stage2_model import Stage2Model
from ivtrain.stage2_layout import from_released, load_released_stage2, to_released

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage2_fixtures import write_stage1_export  # noqa: E402
from test_train_audio_tower import RELEASED as BEATS_RELEASED  # noqa: E402

BERT_LARGE = dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2)


def meta_model(size: str, image_table: bool, embed: int, audio: bool = False, concat: int = 0) -> Stage2Model:
    from transformers import BertConfig

    with torch.device("meta"):
        vision = InternVideo2(ViTConfig(size=size, num_frames=4, image_pos_embed=image_table), pool_out_dim=768)
        text = FusionBert(BertConfig(**BERT_LARGE), 19, concat or vision.cfg.embed_dim)
        beats = BEATs(BEATS_RELEASED) if audio else None
        return Stage2Model(vision, text, embed, 0.07, (0.001, 0.5), DistContext(), beats, concat)


def shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_1b_f4_layout_has_the_released_shapes_and_loads_strictly():
    model = meta_model("1b", image_table=True, embed=512)
    released = to_released(model.state_dict())
    got = shapes(released)
    assert got["vision_encoder.pos_embed"] == (1, 1025, 1408) and got["vision_encoder.img_pos_embed"] == (1, 257, 1408)
    assert got["text_encoder.bert.encoder.layer.19.crossattention.self.key.weight"] == (1024, 1408)
    assert {int(k.split(".")[4]) for k in got if ".crossattention." in k} == set(range(19, 24))
    assert got["vision_proj.weight"] == (512, 768) and got["text_proj.weight"] == (512, 1024)
    assert got["itm_head.weight"] == (2, 1024) and got["temp"] == ()
    assert got["text_encoder.cls.predictions.decoder.weight"] == (30522, 1024)
    assert got["text_encoder.cls.predictions.transform.dense.weight"] == (1024, 1024)
    assert not any(k.startswith(("audio", "av_")) for k in got)
    # a released file also carries the stage-1 alignment heads in its vision encoder: named as unused
    synthetic = {k: torch.empty(v, device="meta") for k, v in got.items()}
    synthetic["vision_encoder.clip_decoder.0.head.weight"] = torch.empty(3200, 1408, device="meta")
    synthetic["vision_encoder.clip_pos_embed"] = torch.empty(1, 1025, 1408, device="meta")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, report = from_released(synthetic, expected)
    assert report.ok and report.matched == len(expected) and converted["temp"].shape == (1,)
    assert sorted(report.unused) == ["vision_encoder.clip_decoder.0.head.weight", "vision_encoder.clip_pos_embed"]
    # what does not fit is named
    broken = dict(synthetic)
    broken.pop("text_encoder.bert.encoder.layer.21.crossattention.self.value.bias")
    broken["text_encoder.bert.encoder.layer.18.crossattention.self.key.weight"] = torch.empty(1024, 1408, device="meta")
    broken["vision_encoder.img_pos_embed"] = torch.empty(1, 197, 1408, device="meta")
    with pytest.raises(ConversionError) as e:
        from_released(broken, expected)
    message = str(e.value)
    assert "missing from checkpoint: text_encoder.bert.encoder.layer.21.crossattention.self.value.bias" in message
    assert "not in model: text_encoder.bert.encoder.layer.18.crossattention.self.key.weight" in message
    assert "shape mismatch vision_encoder.img_pos_embed: checkpoint [1, 197, 1408] vs model [1, 257, 1408]" in message


def test_6b_layout_has_the_audio_keys():
    model = meta_model("6b", image_table=False, embed=768, audio=True, concat=768)
    got = shapes(to_released(model.state_dict()))
    assert got["vision_encoder.pos_embed"] == (1, 1025, 3200) and "vision_encoder.img_pos_embed" not in got
    assert got["audio_encoder.patch_embedding.weight"] == (512, 1, 16, 16)
    assert got["audio_encoder.encoder.layers.11.self_attn.relative_attention_bias.weight"] == (320, 12)
    assert got["audio_proj.weight"] == (768, 768) and got["av_fusion.weight"] == (768, 1536)
    assert got["av_concat_audio_proj.0.weight"] == (768, 768) and got["av_concat_audio_proj.1.weight"] == (768,)
    assert got["av_concat_vision_proj.0.weight"] == (768, 3200) and got["av_concat_vision_proj.1.bias"] == (768,)
    assert got["avtm_head.weight"] == (2, 1024) and got["vision_proj.weight"] == (768, 768)
    assert got["text_encoder.bert.encoder.layer.23.crossattention.self.key.weight"] == (1024, 768)


def tiny_model(seed: int, assets: Path) -> Stage2Model:
    from ivtrain.models.audio import load_beats
    from ivtrain.models.text import load_text_tower

    torch.manual_seed(seed)
    vision = InternVideo2(ViTConfig(size="tiny", image_pos_embed=True), pool_out_dim=40)
    text, _ = load_text_tower(assets / "tiny_bert", 2, 48)
    beats, _ = load_beats(assets / "tiny_beats")
    return Stage2Model(vision, text, 32, 0.05, (0.001, 0.5), DistContext(), beats, av_concat_dim=48).eval()


@torch.no_grad()
def outputs(model: Stage2Model) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    video = torch.randn(2, 3, 4, 32, 32, generator=g)
    frames = torch.tensor([4, 1])
    tokens, mask, pooled = model.encode_vision(video, frames, None)
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    t_mask = ids != 0
    hidden, t_proj = model.encode_text(ids, t_mask)
    audio = torch.randn(2, 198, 64, generator=g)
    av, av_tokens, av_mask = model.audio_visual(model.encode_audio_tokens(audio), model.vision_proj(pooled), tokens, mask)
    return [model.vision_proj(pooled), t_proj, av, model.match_score(hidden, t_mask, tokens, mask, model.itm_head),
            model.match_score(hidden, t_mask, av_tokens, av_mask, model.avtm_head),
            model.text_encoder.mlm_logits(model.text_encoder.fusion(hidden, t_mask, tokens, mask)), model.clamped_temp()]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from ivtrain.objectives import write_tiny_assets

    out = tmp_path_factory.mktemp("assets")
    write_tiny_assets(out)
    return out


def test_round_trip_through_the_released_layout_gives_the_same_outputs(assets, tmp_path):
    from safetensors.torch import load_file, save_file

    from ivtrain.stage2_layout import separate

    trained = tiny_model(0, assets)
    want = outputs(trained)
    released = to_released(trained.state_dict())
    torch.save({"model": released}, tmp_path / "stage2.pth")
    save_file({k: v.contiguous() for k, v in separate(released).items()}, str(tmp_path / "stage2.safetensors"))
    for loaded_sd in (torch.load(tmp_path / "stage2.pth", weights_only=True)["model"],
                      load_file(str(tmp_path / "stage2.safetensors"))):
        fresh = tiny_model(1, assets)
        assert not torch.equal(outputs(fresh)[0], want[0])
        report = load_released_stage2(fresh, loaded_sd)
        assert report.ok and not report.unused
        for a, b in zip(outputs(fresh), want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the tied masked-LM output must stay tied
    untied = dict(released)
    untied["text_encoder.cls.predictions.decoder.weight"] = released["text_encoder.cls.predictions.decoder.weight"] + 1
    with pytest.raises(ConversionError, match="decoder.weight differs from text_encoder.bert.embeddings"):
        load_released_stage2(tiny_model(1, assets), untied)


def test_a_stage1_export_initializes_the_vision_tower_with_nothing_missing_or_unexpected(assets, tmp_path):
    from ivtrain.convert import load_checkpoint
    from ivtrain.export import load_artifact
    from ivtrain.objectives.iv2_stage2_build import load_vision_init

    run = write_stage1_export(tmp_path / "stage1", assets)
    source = load_artifact(run, "encoder")
    encoder = InternVideo2(ViTConfig(size="tiny", image_pos_embed=True), pool_out_dim=source[
        "clip_projector.cross_attn.proj.weight"].shape[0])
    report = load_vision_init(encoder, str(run))
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert report.adapted == ["img_pos_embed keeps its sin-cos start (the source has no image table)"]
    assert torch.equal(encoder.state_dict()["blocks.3.mlp.fc2.weight"], source["blocks.3.mlp.fc2.weight"])
    # the released stage-1 pretrain.pth layout (encoder at top level, alignment heads beside it)
    released = from_ivkit(load_checkpoint(run), "stage1")
    assert "blocks.0.attn.qkv.weight" in released and "clip_decoder.0.head.weight" in released
    torch.save({"model": released}, tmp_path / "pretrain.pth")
    encoder = InternVideo2(ViTConfig(size="tiny", image_pos_embed=True), pool_out_dim=encoder.clip_projector
                           .cross_attn.proj.out_features)
    report = load_vision_init(encoder, str(tmp_path / "pretrain.pth"))
    assert report.ok and not report.missing and not report.unexpected
    assert report.unused and all(k.startswith(("clip_", "final_clip_", "mae_")) for k in report.unused)
    assert torch.equal(encoder.state_dict()["pos_embed"], source["pos_embed"])
