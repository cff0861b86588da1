"""Stage-3 model parts: the QFormer against transformers' InstructBLIP QFormer on the same weights and started from a
BERT directory; HD tiling against the release's rule; LoRA folded into the LLM (same logits, plain transformers
loads it); the loss on answer tokens only, with the vision tokens where the media was; the freeze switches."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


# ------------------------------------------------------------------ QFormer
def instructblip_pair(text_input=True, layers=4):
    from transformers import BertConfig, InstructBlipQFormerConfig, InstructBlipQFormerModel

    from ivtrain.models.qformer import QFormer, QFormerConfig

    torch.manual_seed(0)
    dims = dict(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)
    ref = InstructBlipQFormerModel(InstructBlipQFormerConfig(**dims, encoder_hidden_size=48,
                                                             cross_attention_frequency=2)).eval()
    ours = QFormer(BertConfig(**dims), 48, QFormerConfig(dropout=0, attn_dropout=0, drop_path=0,
                                                         text_input=text_input)).eval()
    renamed = {"bert." + k.replace(".attention.attention.", ".attention.self.")
               .replace("crossattention.attention.", "crossattention.self.")
               .replace("embeddings.layernorm", "embeddings.LayerNorm"): v for k, v in ref.state_dict().items()}
    return ref, ours, renamed


def test_qformer_equals_instructblip_qformer_on_the_same_weights():
    ref, ours, renamed = instructblip_pair()
    assert set(renamed) == set(ours.state_dict())            # the release's names, InstructBLIP's layout
    ours.load_state_dict(renamed)
    crosses = [i for i, layer in enumerate(ours.bert.encoder.layer) if hasattr(layer, "crossattention")]
    assert crosses == [0, 2]
    q, vision = torch.randn(2, 8, 32), torch.randn(2, 20, 48)
    ids, mask = torch.randint(1, 100, (2, 7)), torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    want = ref(input_ids=ids, attention_mask=torch.cat([torch.ones(2, 8), mask.float()], 1), query_embeds=q,
               encoder_hidden_states=vision).last_hidden_state[:, :8]
    got = ours(q, vision, ids, mask)
    assert torch.allclose(got, want, atol=1e-6)
    # the instruction matters, its padding does not
    assert not torch.allclose(ours(q, vision, ids.flip(1), mask), got, atol=1e-3)
    padded = ids.clone()
    padded[1, 5:] = 3
    assert torch.allclose(ours(q, vision, padded, mask), got, atol=1e-6)


def test_qformer_without_text_input_has_no_text_weights_and_ignores_text():
    _, ours, _ = instructblip_pair(text_input=False)
    names = set(ours.state_dict())
    assert not any("word_embeddings" in n or ".intermediate.dense" in n for n in names)
    q, vision = torch.randn(1, 8, 32), torch.randn(1, 20, 48)
    assert torch.equal(ours(q, vision, torch.randint(1, 100, (1, 5)), torch.ones(1, 5, dtype=torch.bool)),
                       ours(q, vision))


def test_qformer_starts_from_a_bert_directory(tmp_path):
    from transformers import BertForMaskedLM

    from ivtrain.models.qformer import QFormerConfig, load_qformer
    from ivtrain.tiny_chat import save_tiny_qformer

    path = save_tiny_qformer(tmp_path / "bert", layers=4)
    bert = BertForMaskedLM.from_pretrained(path).state_dict()
    qformer, new = load_qformer(QFormerConfig(bert=str(path)), vision_width=48)
    sd = qformer.state_dict()
    assert torch.equal(sd["bert.encoder.layer.1.attention.self.query.weight"],
                       bert["bert.encoder.layer.1.attention.self.query.weight"])
    # each query feed-forward block starts as its layer's text one (BLIP-2)
    assert torch.equal(sd["bert.encoder.layer.2.output_query.dense.weight"], bert["bert.encoder.layer.2.output.dense.weight"])
    assert sorted({n.split(".")[4] for n in new}) == ["crossattention"] and len(new) == 2 * 10
    last = qformer.bert.encoder.layer[-1]
    assert not any(p.requires_grad for p in [*last.intermediate.parameters(), *last.output.parameters()])
    assert all(p.requires_grad for p in last.output_query.parameters())


def test_qformer_and_llm_flop_counts_match_torchs_flop_counter(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    from ivtrain.models.llm import LLMConfig, LoraSettings, llm_flops, load_llm
    from ivtrain.tiny_chat import save_tiny_llm

    _, qformer, _ = instructblip_pair()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        qformer(torch.randn(1, 8, 32), torch.randn(1, 20, 48), torch.randint(1, 100, (1, 7)),
                torch.ones(1, 7, dtype=torch.bool))
    # the counter does not see SDPA's CPU kernel: its two matmuls over the scores are added here, 4 layers of
    # self-attention over 8 + 7 tokens and 2 of cross-attention of 8 queries over 20 vision tokens, width 32
    attention = 4 * 4 * 15 * 15 * 32 + 2 * 4 * 8 * 20 * 32
    assert abs((counter.get_total_flops() + attention) / qformer.flops(8, 7, 20) - 1) < 1e-6
    lm = load_llm(LLMConfig(path=str(save_tiny_llm(tmp_path / "llm")), lora=LoraSettings(r=4),
                            attn_implementation="eager"))   # explicit matmuls the counter sees
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        lm(inputs_embeds=torch.randn(1, 50, 64))
    assert abs(counter.get_total_flops() / llm_flops(lm, 50) - 1) < 0.01


# ------------------------------------------------------------------ HD tiling
@pytest.mark.parametrize("size, grid", [
    ((1280, 720), (2, 1)),      # 16:9 -> 2 wide (ratio 2 is closer than 3:2)
    ((640, 480), (3, 2)),       # 4:3 -> 3 x 2 = 6 tiles (ratio 1.5)
    ((480, 640), (2, 3)),       # portrait: the transpose
    ((224, 224), (1, 1)),       # square and small: one tile
    ((448, 448), (2, 2)),       # square and large: 2 x 2 (same ratio, area > half of 2 x 2 tiles)
    ((300, 300), (2, 2)),       # 90000 > 0.5 x 224^2 x 4 = 100352? no: see below
    ((1000, 100), (6, 1)),      # very wide: a row of six
])
def test_hd_grid_follows_the_dynamic_tiling_rule(size, grid):
    from ivtrain.data.hd import choose_grid

    width, height = size
    if size == (300, 300):   # 90000 < 100352: the 2 x 2 grid loses the tie, one tile stays
        grid = (1, 1)
    assert choose_grid(width, height, 224, 6) == grid


def test_hd_candidates_are_every_grid_of_at_most_n_tiles():
    from ivtrain.data.hd import candidate_grids

    grids = candidate_grids(6)
    assert len(grids) == len(set(grids)) == 14 and max(c * r for c, r in grids) == 6
    assert [c * r for c, r in grids] == sorted(c * r for c, r in grids)
    assert candidate_grids(1) == [(1, 1)]


def test_hd_views_are_the_resized_clips_tiles_row_by_row_then_the_global_view():
    import numpy as np
    import torch.nn.functional as F

    from ivtrain.data.hd import hd_views

    frames = np.random.default_rng(0).integers(0, 256, (3, 60, 130, 3), dtype=np.uint8)   # 3 frames, 13:6
    views, (cols, rows) = hd_views(frames, 32, 6)
    assert (cols, rows) == (2, 1) and views.shape == (3, 3, 3, 32, 32) and views.dtype == torch.uint8
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    big = F.interpolate(x, size=(rows * 32, cols * 32), mode="bicubic", align_corners=False)
    as_uint8 = lambda t: t.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3)  # noqa: E731
    assert torch.equal(views[0], as_uint8(big[..., :32]))          # left tile
    assert torch.equal(views[1], as_uint8(big[..., 32:]))          # right tile
    assert torch.equal(views[2], as_uint8(F.interpolate(big, size=(32, 32), mode="bicubic", align_corners=False)))
    tall = np.zeros((1, 130, 40, 3), dtype=np.uint8)                # an image, 3 rows of one tile
    views, grid = hd_views(tall, 32, 6)
    assert grid == (1, 3) and views.shape == (4, 3, 1, 32, 32)


# ------------------------------------------------------------------ LoRA
def test_merged_lora_gives_the_same_logits_and_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from ivtrain.models.llm import LLMConfig, LoraSettings, load_llm, merged_llm
    from ivtrain.tiny_chat import save_tiny_llm

    path = save_tiny_llm(tmp_path / "llm")
    torch.manual_seed(1)
    model = load_llm(LLMConfig(path=str(path), lora=LoraSettings(r=4, alpha=8, dropout=0.0))).eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any("lm_head" in n for n in trainable)
    with torch.no_grad():   # adapters as training leaves them: B no longer zero
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.05)
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(path)(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-3        # the adapters change the output
    merged_llm(model).save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, adapted, atol=1e-5)


# ------------------------------------------------------------------ the model on a batch
@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    """A tiny stage-3 objective on a few motion clips and images with two-turn conversations, and one batch."""
    from instruction_sets import motion_instruction_set

    from ivtrain.config import load_recipe
    from ivtrain.data.index import ShardIndex
    from ivtrain.data.loader import MixtureStream, Source
    from ivtrain.objectives.iv2_stage3 import IV2Stage3

    work = tmp_path_factory.mktemp("stage3_model")
    assets = IV2Stage3.write_tiny_assets(work / "assets")
    index = motion_instruction_set(work / "set", "set", per_class=1, seed=0, turns=2, images=2)

    def build(*sets):
        recipe = load_recipe(ROOT / "recipes/iv2_stage3_tiny.yaml",
                             [f"assets={work / 'assets'}", f"data.shards={index}", "data.batch_size=6",
                              "data.num_workers=0", "data.index_cache=off", *sets])
        torch.manual_seed(0)
        objective = IV2Stage3(recipe, torch.device("cpu"))
        stream = MixtureStream([Source("set", ShardIndex.open(str(index), "off"))], recipe.data,
                               objective.sample_spec(), collate_fn=objective.collate)
        return objective, next(iter(stream))
    return {"build": build, "assets": assets}


def test_loss_is_the_cross_entropy_of_answer_tokens_only(stage3):
    objective, batch = stage3["build"]("iv2_stage3.qformer.dropout=0", "iv2_stage3.qformer.attn_dropout=0",
                                       "iv2_stage3.qformer.drop_path=0", "iv2_stage3.llm.lora.dropout=0")
    model = objective.trainable.eval()
    assert batch["is_image"].any() and not batch["is_image"].all()     # clips and images in one batch
    inputs = objective.prepare(batch)
    loss, metrics = model(**inputs)
    with torch.no_grad():
        tokens, mask = model.vision_features(inputs["views"], inputs["view_frames"])
        vision = model.view_tokens(tokens, mask, inputs["views_per_sample"], inputs["qformer_ids"],
                                   inputs["qformer_mask"])
        text = model.lm.get_input_embeddings()(inputs["input_ids"])
        embeds, attention, labels = model.assemble(vision, inputs["input_ids"], inputs["labels"], inputs["vision_at"],
                                                   inputs["text_len"])
        logits = model.lm(inputs_embeds=embeds, attention_mask=attention).logits
    tokenizer = objective.text.llm_tokenizer()
    manual, count = 0.0, 0
    for i in range(batch["size"]):
        at, n, q = inputs["vision_at"][i], inputs["text_len"][i], vision[i].shape[0]
        # the sequence: text before the media, the views' tokens, the rest of the text, then padding
        assert torch.equal(embeds[i, :at], text[i, :at]) and torch.equal(embeds[i, at:at + q], vision[i])
        assert torch.equal(embeds[i, at + q:n + q], text[i, at:n]) and attention[i].sum() == n + q
        answers = (labels[i] != -100).nonzero().squeeze(1)
        label = batch["labels"][i]     # the json's label: the direction, or the image's colour
        answers_text = f"{label}<|end|>" if batch["is_image"][i] else f"{label}<|end|>{label}<|end|>"
        assert tokenizer.decode(labels[i, answers]) == answers_text
        for p in answers.tolist():
            manual += torch.nn.functional.cross_entropy(logits[i, p - 1], labels[i, p], reduction="sum").item()
            count += 1
    assert abs(loss.item() - manual / count) < 1e-5
    assert metrics["llm_tokens"] == attention.sum() / batch["size"]


def test_freeze_switches_keep_parts_out_of_training(stage3):
    objective, batch = stage3["build"]("iv2_stage3.vision.freeze=true", "iv2_stage3.qformer.freeze=true")
    model = objective.trainable
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("project_up.") or ".lora_" in n for n in trainable)
    inputs = objective.prepare(batch)       # a frozen tower runs here, without grad
    assert inputs["vision_tokens"] is not None and not inputs["vision_tokens"].requires_grad
    assert not model.vision_encoder.training and model.lm.training
    loss, _ = model(**inputs)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    objective, _ = stage3["build"]()
    trainable = {n for n, p in objective.trainable.named_parameters() if p.requires_grad}
    assert any(n.startswith("vision_encoder.blocks.") for n in trainable)
    assert not any(n.startswith("vision_encoder.clip_projector.") for n in trainable)   # no output reads it
    assert not any(n.startswith("lm.") and ".lora_" not in n for n in trainable)


def test_zeroed_vision_tokens_change_what_the_llm_sees(stage3):
    objective, batch = stage3["build"]()
    model = objective.trainable.eval()
    inputs = objective.prepare(batch)
    with torch.no_grad():
        assert model(**inputs)[0] != model(**inputs, zero_vision=True)[0]


def test_a_released_internvideo2_chat_state_dict_loads_by_name(stage3):
    from ivtrain.convert import ConversionError, load_released_chat

    source, _ = stage3["build"]()
    released = {k.replace(".base_layer.", "."): v.clone() for k, v in source.trainable.state_dict().items()}
    assert {"vision_encoder.pos_embed", "vision_layernorm.weight", "query_tokens", "extra_query_tokens",
            "project_up.weight", "qformer.bert.embeddings.word_embeddings.weight",
            "lm.base_model.model.model.layers.0.self_attn.q_proj.weight",
            "lm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"} <= set(released)
    released["project_down.weight"] = torch.zeros(1)
    target, _ = stage3["build"]()
    with torch.no_grad():   # every weight other than the source's, frozen ones included
        for p in target.trainable.parameters():
            p.add_(torch.randn_like(p))
    report = load_released_chat(target.trainable, {"model": released})
    assert report.unused == ["project_down.weight"]
    for key, value in source.trainable.state_dict().items():
        assert torch.equal(target.trainable.state_dict()[key], value), key
    del released["query_tokens"]
    with pytest.raises(ConversionError, match="query_tokens"):
        load_released_chat(target.trainable, released)
