"""`iv eval probe`: the attentive probe on labeled shards, from a run directory or a random encoder."""
import csv
import json
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import train_synthetic  # noqa: E402
from typer.testing import CliRunner  # noqa: E402
import typer  # noqa: E402

from ivtrain.cli import probe  # noqa: E402
from ivtrain.config import load_recipe, to_dict  # noqa: E402
from ivtrain.eval.probe import encode_set, load_encoder, run_probe  # noqa: E402
from ivtrain.models.vit import InternVideo2  # noqa: E402


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    sets = {}
    for split, seed in (("train", 1), ("eval", 2)):
        rows = list(csv.DictReader(open(train_synthetic.write_motion_dataset(root / split, 2, split, seed))))
        sets[split] = train_synthetic.write_shards([r["path"] for r in rows], root / f"{split}_shards", split,
                                                   [r["label"] for r in rows], per_shard=4)
    unlabeled = train_synthetic.write_shards([r["path"] for r in rows], root / "nolabel", "nolabel", None)
    return root, sets, unlabeled


def test_probe_cli_on_a_random_encoder(labeled, tmp_path):
    root, sets, _ = labeled
    app = typer.Typer()
    app.command()(probe)
    out = tmp_path / "probe.json"
    result = CliRunner().invoke(app, [str(sets["train"]), str(sets["eval"]), "--recipe", "recipes/iv2_stage1_tiny.yaml",
                                      "--random-init", "--epochs", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert got["classes"] == ["down", "left", "right", "up"] and got["num_train"] == 8 and got["num_eval"] == 8
    assert got["train_accuracy"] >= 0.75  # the probe can fit its training set
    assert 0.0 <= got["eval_accuracy"] <= 1.0
    conf = got["eval_confusion"]  # [true][predicted]: each row counts that class's eval clips
    assert [sum(row) for row in conf] == [2, 2, 2, 2]
    assert sum(conf[i][i] for i in range(4)) / 8 == pytest.approx(got["eval_accuracy"])


def test_probe_loads_a_run_directory_strictly(labeled, tmp_path):
    from safetensors.torch import save_file

    root, sets, _ = labeled
    recipe = load_recipe("recipes/iv2_stage1_tiny.yaml")
    torch.manual_seed(5)
    enc = InternVideo2(recipe.model, pool_out_dim=32)
    save_file({"encoder." + k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp_path / "student.safetensors"))
    (tmp_path / "recipe.json").write_text(json.dumps(to_dict(recipe)))
    loaded, _ = load_encoder(tmp_path)
    assert torch.equal(loaded.blocks[1].attn.qkv.weight, enc.blocks[1].attn.qkv.weight)
    res = run_probe(str(sets["train"]), str(sets["eval"]), run_dir=tmp_path, epochs=5)
    assert res.num_train == 8


def test_probe_refuses_unlabeled_shards(labeled):
    root, sets, unlabeled = labeled
    recipe = load_recipe("recipes/iv2_stage1_tiny.yaml")
    with pytest.raises(ValueError, match="carry no label"):
        run_probe(str(unlabeled), str(sets["eval"]), recipe=recipe, random_init=True, epochs=1)


def test_batched_encoding_matches_one_clip_at_a_time(labeled):
    root, sets, _ = labeled
    encoder, recipe = load_encoder(None, load_recipe("recipes/iv2_stage1_tiny.yaml"), random_init=True)
    one, labels_one = encode_set(encoder, recipe, str(sets["train"]), batch_size=1)
    three, labels_three = encode_set(encoder, recipe, str(sets["train"]), batch_size=3)  # 8 clips: 3 + 3 + 2
    assert one.shape[0] == 8 and labels_three == labels_one
    torch.testing.assert_close(three, one, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_probe_refuses_cuda_where_there_is_none(labeled):
    root, sets, _ = labeled
    with pytest.raises(RuntimeError, match="--device=cuda but CUDA is not available"):
        run_probe(str(sets["train"]), str(sets["eval"]), recipe=load_recipe("recipes/iv2_stage1_tiny.yaml"),
                  random_init=True, epochs=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_features_match_cpu(labeled):
    root, sets, _ = labeled
    encoder, recipe = load_encoder(None, load_recipe("recipes/iv2_stage1_tiny.yaml"), random_init=True)
    cpu, _ = encode_set(encoder, recipe, str(sets["eval"]), device="cpu")
    gpu, _ = encode_set(encoder, recipe, str(sets["eval"]), device="cuda")
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(gpu, cpu, dim=-1)
    assert cosine.min() > 0.99, cosine.min()
    res = run_probe(str(sets["train"]), str(sets["eval"]), recipe=recipe, random_init=True, epochs=40, device="cuda")
    assert res.train_accuracy >= 0.75


def test_a_run_trained_with_flash_attention_is_probed_where_there_is_none(labeled):
    root, sets, _ = labeled
    recipe = load_recipe("recipes/iv2_stage1_tiny.yaml", ["model.attn_backend=flash"])
    encoder, recipe = load_encoder(None, recipe, random_init=True)
    feats, _ = encode_set(encoder, recipe, str(sets["eval"]), device="cpu")
    assert feats.shape[0] == 8 and encoder.backend == "sdpa"
