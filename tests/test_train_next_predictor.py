"""The predictor's ModernBERT layers: read from a transformers directory (strict), they compute what the transformers
model's own layers compute on the same hidden states (global and sliding-window attention, RoPE per layer kind);
directories that are not ModernBERT, or too shallow, are refused in one line."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ivtrain.models.predictor import ModernBertLayers, Predictor, read_modernbert
from ivtrain.tiny_teachers import save_tiny_modernbert, save_tiny_siglip_teacher

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_modernbert(tmp_path_factory.mktemp("bert") / "tiny_modernbert")


def transformers_layers_io(path, count: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the input of the last `count` layers, the output of the last layer) when the transformers model runs."""
    from transformers import ModernBertForMaskedLM

    model = ModernBertForMaskedLM.from_pretrained(path, attn_implementation="sdpa").eval()
    layers = model.model.layers
    seen = {}

    def keep_input(module, args, kwargs):
        seen["in"] = args[0] if args else kwargs["hidden_states"]

    def keep_output(module, args, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out

    hooks = [layers[len(layers) - count].register_forward_pre_hook(keep_input, with_kwargs=True),
             layers[-1].register_forward_hook(keep_output)]
    with torch.no_grad():
        model.model(inputs_embeds=hidden)
    for hook in hooks:
        hook.remove()
    return seen["in"], seen["out"]


@pytest.mark.parametrize("count", [3, 6])
def test_last_layers_load_strict_and_match_transformers(bert_dir, count):
    """The last 3 of 6 layers (global, window, window) and all 6 (the first has no norm before its attention), over a
    sequence of 4 + 64 tokens, longer than the window of 4 tokens each side: equal to 1e-5."""
    arch = read_modernbert(bert_dir)
    assert arch.depth == 6 and arch.window == 4
    assert arch.layer_types[-3:] == ("full_attention", "sliding_attention", "sliding_attention")
    ours = ModernBertLayers(arch, count).eval()
    assert ours.load_from(bert_dir) == len(ours.layers.state_dict())
    x_in, x_out = transformers_layers_io(bert_dir, count, torch.randn(2, 68, arch.hidden,
                                                                       generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        got = ours(x_in)
    assert (got - x_out).abs().max() <= 1e-5
    # the window is in force: the same layers attending to the whole sequence compute something else
    for layer in ours.layers:
        layer.attn.window = None
    with torch.no_grad():
        assert (ours(x_in) - x_out).abs().max() > 1e-3


def test_a_transformers_4_config_reads_the_same_layers(bert_dir, tmp_path):
    """ModernBERT-large's config.json (transformers 4.x) names no layer types and gives the RoPE bases as
    global_rope_theta / local_rope_theta: the same architecture comes out."""
    old = tmp_path / "old"
    shutil.copytree(bert_dir, old)
    raw = json.loads((old / "config.json").read_text())
    for key in ("layer_types", "rope_parameters"):
        raw.pop(key)
    raw.update(global_rope_theta=160000.0, local_rope_theta=10000.0)
    (old / "config.json").write_text(json.dumps(raw))
    assert read_modernbert(old) == read_modernbert(bert_dir)


def test_the_predictor_scatters_visible_tokens_to_their_places(bert_dir):
    """Visible tokens go back where the mask says, in the encoder's order; every hidden place gets the mask token."""
    arch = read_modernbert(bert_dir)
    layers = ModernBertLayers(arch, 2)
    predictor = Predictor(dim=16, grid=(1, 2, 3), num_cls=2, layers=layers)
    seen = {}
    predictor.to_bert_proj.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    visible = torch.tensor([[True, False, False, True, True, False]])
    tokens = torch.randn(1, 2 + 3, 16)
    out = predictor(tokens, visible)
    assert out.shape == (1, 2 + 6, arch.hidden)
    x = seen["x"] - predictor.pos_embed
    assert torch.allclose(x[0, :2], tokens[0, :2])
    assert torch.allclose(x[0, 2:][visible[0]], tokens[0, 2:])
    assert torch.allclose(x[0, 2:][~visible[0]], predictor.mask_token[0].expand(3, -1))


def test_bad_predictor_directories_fail_with_one_line(bert_dir, tmp_path):
    siglip = save_tiny_siglip_teacher(tmp_path / "siglip")
    with pytest.raises(ValueError, match="is not a ModernBERT .model_type 'siglip_vision_model'"):
        read_modernbert(siglip)
    with pytest.raises(ValueError, match="has no config.json"):
        read_modernbert(tmp_path)
    with pytest.raises(ValueError, match="last 7 layers of a ModernBERT with 6"):
        ModernBertLayers(read_modernbert(bert_dir), 7)
    # weights that lack a tensor of the layers asked for
    short = tmp_path / "short"
    shutil.copytree(bert_dir, short)
    weights = load_file(str(short / "model.safetensors"))
    weights.pop("model.layers.5.mlp.Wi.weight")
    save_file(weights, str(short / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        ModernBertLayers(read_modernbert(short), 3).load_from(short)
    message = str(e.value)
    assert "\n" not in message and "1 tensors missing (e.g. layers.5.mlp.Wi.weight)" in message
