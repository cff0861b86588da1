"""The fusion text tower (BERT with cross attention from fusion_layer on) against transformers' own BERT on the
same weights: the text layers, the full stack without fusion, and the masked-LM head."""
import pytest
import torch

from ivtrain.models.text import TextTowerError, load_text_tower

WORDS = "a red square moves left right up down over dark ground".split()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    path = tmp_path_factory.mktemp("bert")
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=40)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def batch(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["a red square moves left", "up", "dark ground over a square"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


def test_text_layers_equal_transformers_bert(bert_dir):
    from transformers import BertForMaskedLM

    ids, mask = batch(bert_dir)
    reference = BertForMaskedLM.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        tower, new = load_text_tower(bert_dir, fusion_layer=4, vision_width=48)   # no fusion: plain BERT
        tower.eval()
        hidden = tower.text(ids, mask)
        torch.testing.assert_close(hidden[mask], out.hidden_states[-1][mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tower.mlm_logits(hidden)[mask], out.logits[mask], atol=1e-4, rtol=1e-4)
        assert new == []
        fused, new = load_text_tower(bert_dir, fusion_layer=2, vision_width=48)
        fused.eval()
        torch.testing.assert_close(fused.text(ids, mask)[mask], out.hidden_states[2][mask], atol=1e-5, rtol=1e-5)
    # the fusion layers' cross attention is new: named, its key/value read the vision width
    assert new and all(".crossattention." in n for n in new)
    assert {int(n.split(".")[3]) for n in new} == {2, 3}
    assert fused.bert.encoder.layer[2].crossattention.self.key.in_features == 48


def test_fusion_layers_attend_to_the_vision_tokens(bert_dir):
    ids, mask = batch(bert_dir)
    tower, _ = load_text_tower(bert_dir, fusion_layer=2, vision_width=48)
    tower.eval()
    vision = torch.randn(3, 7, 48)
    with torch.no_grad():
        x = tower.text(ids, mask)
        a = tower.fusion(x, mask, vision)
        b = tower.fusion(x, mask, vision * 2)
        partial = tower.fusion(x, mask, vision, torch.tensor([[True] * 4 + [False] * 3] * 3))
        cut = tower.fusion(x, mask, vision[:, :4])
    assert a.shape == x.shape and not torch.allclose(a, b)
    torch.testing.assert_close(partial, cut, atol=1e-5, rtol=1e-5)   # masked vision tokens are not attended


def test_a_directory_that_is_not_bert_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(TextTowerError, match="holds a gpt2 model, not a BERT"):
        load_text_tower(tmp_path, 1, 48)
    with pytest.raises(TextTowerError, match="has no config.json"):
        load_text_tower(tmp_path / "nothing", 1, 48)
