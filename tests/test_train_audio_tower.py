"""The BEATs audio tower: the released checkpoint layout loads strictly (and a file that does not fit is refused with
the names), the pieces follow their formulas, and, where the released BEATs source is at hand, the tower computes
what it computes on the same weights."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ivtrain.convert import ConversionError
from ivtrain.models.audio import (AudioTowerError, BEATs, PositionConv, load_beats, relative_buckets,
                                  save_tiny_beats)

MIRROR = Path("/work/.mirror/OpenGVLab+InternVideo/repo")
BEATS_SRC = "InternVideo2/multi_modality/models/backbones/beats"
# the released BEATs_iter3 configuration, as its checkpoints' cfg holds it
RELEASED = dict(input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
                encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu", layer_norm_first=False,
                deep_norm=True, conv_pos=128, conv_pos_groups=16, relative_position_embedding=True, num_buckets=320,
                max_distance=800, gru_rel_pos=True, finetuned_model=False)


def test_released_configuration_has_the_released_tensors():
    with torch.device("meta"):
        tower = BEATs(RELEASED)
    shapes = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    assert shapes["patch_embedding.weight"] == (512, 1, 16, 16) and "patch_embedding.bias" not in shapes
    assert shapes["post_extract_proj.weight"] == (768, 512)
    assert shapes["encoder.pos_conv.0.weight_g"] == (1, 1, 128) and shapes["encoder.pos_conv.0.weight_v"] == (768, 48, 128)
    assert shapes["encoder.layers.11.self_attn.grep_linear.weight"] == (8, 64)
    assert shapes["encoder.layers.11.self_attn.grep_a"] == (1, 12, 1, 1)
    # one relative position table, stored under every layer's name as the released state dicts hold it
    assert all(shapes[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"] == (320, 12) for i in range(12))
    assert len(shapes) == 5 + 3 + 12 * 20 + 2   # 20 a layer: q k v out, gate (3), table, 2 norms, fc1 fc2


def test_checkpoint_file_loads_strictly_and_a_misfit_is_named(tmp_path):
    path = save_tiny_beats(tmp_path / "beats")
    tower, report = load_beats(path)
    assert report.ok and not any(p.requires_grad for p in tower.parameters()) and not tower.training
    saved = torch.load(path / "beats.pt", weights_only=True)
    saved["model"].pop("encoder.layers.1.fc2.bias")
    saved["model"]["encoder.extra"] = torch.zeros(1)
    torch.save(saved, tmp_path / "bad.pt")
    with pytest.raises(ConversionError, match="(?s)missing from checkpoint: encoder.layers.1.fc2.bias.*"
                                              "not in model: encoder.extra"):
        load_beats(tmp_path / "bad.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(AudioTowerError, match="not a released BEATs checkpoint"):
        load_beats(tmp_path / "other.pt")
    with pytest.raises(AudioTowerError, match="does not exist"):
        load_beats(tmp_path / "nothing")


def test_relative_buckets_follow_the_log_bucket_rule():
    buckets = relative_buckets(40, num_buckets=16, max_distance=32)   # 8 per sign; 4 exact distances
    for i, j in [(0, 0), (5, 2), (2, 5), (0, 39), (39, 0), (10, 16)]:
        d = j - i
        exact = 4
        if abs(d) < exact:
            want = abs(d)
        else:
            want = min(7, exact + int(math.log(abs(d) / exact) / math.log(32 / exact) * (8 - exact)))
        assert buckets[i, j] == want + (8 if d > 0 else 0), (i, j)


def test_weight_normalized_position_conv_equals_torch_weight_norm():
    conv = PositionConv(8, kernel=4, groups=2)
    with torch.no_grad():
        conv.weight_g.uniform_(0.5, 2.0)
    reference = torch.nn.Conv1d(8, 8, 4, padding=2, groups=2)
    reference = torch.nn.utils.parametrizations.weight_norm(reference, dim=2)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(conv.weight_g)
        reference.parametrizations.weight.original1.copy_(conv.weight_v)
        reference.bias.copy_(conv.bias)
    x = torch.randn(2, 10, 8)
    want = F.gelu(reference(x.transpose(1, 2))[:, :, :-1]).transpose(1, 2)
    torch.testing.assert_close(conv(x), want)


RELEASED_PARITY = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import backbone
from ivtrain.models.audio import load_beats
tower, _ = load_beats(sys.argv[2])
cfg = torch.load(sys.argv[2] + "/beats.pt", weights_only=True)["cfg"]
class Args: pass
args = Args(); args.__dict__.update(cfg); args.dropout = args.attention_dropout = args.activation_dropout = 0.0
args.encoder_layerdrop = 0.0
encoder = backbone.TransformerEncoder(args).eval()
print(encoder.load_state_dict({k[len("encoder."):]: v for k, v in tower.state_dict().items()
                               if k.startswith("encoder.")}, strict=True))
torch.manual_seed(1)
fbank = torch.randn(2, 64, 32)
with torch.no_grad():
    x = tower.patch_embedding(fbank.unsqueeze(1)).flatten(2).transpose(1, 2)
    x = tower.post_extract_proj(tower.layer_norm(x))
    want, _ = encoder(x.clone())
    got = tower(fbank)
print("maxdiff", (got - want).abs().max().item())
"""


@pytest.mark.skipif(not MIRROR.exists(), reason="released BEATs source not here")
def test_tower_equals_the_released_beats_encoder_on_the_same_weights(tmp_path):
    src = tmp_path / "beats_src"
    src.mkdir()
    for name in ("backbone.py", "modules.py"):
        text = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{BEATS_SRC}/{name}"], capture_output=True,
                              text=True, check=True).stdout
        (src / name).write_text(text)
    path = save_tiny_beats(tmp_path / "beats")
    proc = subprocess.run([sys.executable, "-c", RELEASED_PARITY, str(src), str(path)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<All keys matched successfully>" in proc.stdout
    assert float(proc.stdout.split("maxdiff")[1]) < 1e-5, proc.stdout
