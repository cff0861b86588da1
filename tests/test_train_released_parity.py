"""Details of the released InternVideo2 weights that no tensor shape shows: 16 attention-pooling heads in every
size, the tanh GELU, trained position tables, the motion teacher's final norm, the visible-token count."""
import math

import pytest
import torch
import torch.nn.functional as F

from ivtrain.models.vit import ViTConfig
from ivtrain.convert import from_ivkit, load_released
from ivtrain.models.layers import Mlp
from ivtrain.models.vit import InternVideo2, resolve_vit

# a B-shaped tower at test scale: 12 block heads, 16 pooling heads (the preset's), 96 channels
SMALL_B = ViTConfig(size="b", img_size=28, patch_size=14, num_frames=2, embed_dim=96, depth=2, num_heads=12,
                    mlp_dim=192)


def released_state_dict(cfg: ViTConfig, pooled_dim: int, seed: int = 0) -> dict:
    """Random weights in the released stage-1 layout (top-level blocks.*, clip_projector.*)."""
    torch.manual_seed(seed)
    shapes = {k: v.shape for k, v in InternVideo2(cfg, pool_out_dim=pooled_dim).state_dict().items()}
    return from_ivkit({f"encoder.{k}": torch.randn(s) * 0.2 for k, s in shapes.items()}, "stage1")


def pooled_by_hand(tokens: torch.Tensor, sd: dict, heads: int) -> torch.Tensor:
    """The released AttentionPoolingBlock: the mean token queries every token; q, k, v each LayerNorm'd and
    projected with their own bias; `heads` heads; output projection."""
    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[f"clip_projector.{name}.weight"], sd[f"clip_projector.{name}.bias"])

    p = "clip_projector.cross_attn."
    q = ln(tokens.mean(1, keepdim=True), "norm1_q") @ sd[p + "q.weight"].T + sd[p + "q_bias"]
    k = ln(tokens, "norm1_k") @ sd[p + "k.weight"].T + sd[p + "k_bias"]
    v = ln(tokens, "norm1_v") @ sd[p + "v.weight"].T + sd[p + "v_bias"]
    b, n, c = k.shape
    split = lambda t: t.reshape(b, -1, heads, c // heads).transpose(1, 2)   # noqa: E731
    weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads)).softmax(-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(b, 1, c)
    return (out @ sd[p + "proj.weight"].T + sd[p + "proj.bias"]).squeeze(1)


def test_pooling_heads_differ_from_block_heads_as_released():
    cfg = resolve_vit(SMALL_B)
    assert (cfg.num_heads, cfg.pool_heads, cfg.mlp_act) == (12, 16, "gelu_tanh")
    sd = released_state_dict(SMALL_B, pooled_dim=32)
    encoder = InternVideo2(SMALL_B, pool_out_dim=32).eval()
    report = load_released(encoder, sd, encoder_only=True)
    assert report.ok and report.matched == len(encoder.state_dict())
    video = torch.randn(2, 3, 2, 28, 28)
    with torch.no_grad():
        out = encoder(video)
    torch.testing.assert_close(out.pooled, pooled_by_hand(out.tokens, sd, heads=16), atol=1e-5, rtol=1e-5)
    # 12 heads (the blocks' count) would give another output from the same weights
    assert (out.pooled - pooled_by_hand(out.tokens, sd, heads=12)).abs().max() > 1e-3


@pytest.mark.parametrize("act, closed_form", [
    ("gelu", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
    ("gelu_tanh", lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
])
def test_mlp_activation_matches_its_closed_form(act, closed_form):
    mlp = Mlp(8, 16, act=act)
    x = torch.linspace(-4, 4, 64).reshape(8, 8)
    torch.testing.assert_close(mlp.act(x), closed_form(x), atol=1e-6, rtol=1e-6)
    other = "gelu_tanh" if act == "gelu" else "gelu"
    assert (Mlp(8, 16, act=other).act(x) - closed_form(x)).abs().max() > 1e-5


def test_position_tables_receive_gradients():
    torch.manual_seed(0)
    encoder = InternVideo2(ViTConfig(size="tiny"))
    encoder(torch.randn(2, 3, 4, 32, 32)).pooled.square().sum().backward()
    assert encoder.pos_embed.requires_grad and encoder.pos_embed.grad.abs().sum() > 0
    frozen = InternVideo2(ViTConfig(size="tiny", train_pos_embed=False))
    assert not frozen.pos_embed.requires_grad


def test_visible_patches_per_frame_round_the_hidden_count_down():
    from ivtrain.data.masking import visible_per_frame

    assert visible_per_frame(256, 0.8) == 52      # 256 - int(204.8), as released (not round(51.2) = 51)
    assert visible_per_frame(16, 0.75) == 4
    assert visible_per_frame(4, 0.99) == 1        # at least one


def test_motion_targets_take_the_final_norm_on_the_last_layer(tmp_path):
    from transformers import VideoMAEModel

    from ivtrain.models.teachers import MotionTeacher
    from ivtrain.tiny_teachers import save_tiny_videomae_teacher

    path = save_tiny_videomae_teacher(tmp_path / "videomae", layers=3)
    teacher = MotionTeacher(path, num_layers=2)
    video = torch.randn(1, 3, 8, 32, 32)
    targets = teacher(video)
    model = VideoMAEModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(pixel_values=video.transpose(1, 2), output_hidden_states=True)
    assert model.layernorm is not None
    torch.testing.assert_close(targets[0], out.hidden_states[-2])                        # a block's output
    torch.testing.assert_close(targets[1], model.layernorm(out.hidden_states[-1]))       # the final norm's
    assert not torch.allclose(targets[1], out.hidden_states[-1])
