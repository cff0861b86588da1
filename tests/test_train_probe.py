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

from ivtrain.eval.cli import probe  # noqa: E402
from ivtrain.config import load_recipe  # noqa: E402
from ivtrain.eval import probe as probe_module  # noqa: E402
from ivtrain.eval.probe import (CachedFeatures, StreamedFeatures, class_lookup, encode_set, load_encoder,  # noqa: E402
                                run_probe, train_probe)
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


def test_probe_cli_reports_bad_input_without_a_traceback(labeled):
    root, sets, unlabeled = labeled
    app = typer.Typer()
    app.command()(probe)
    base = ["--recipe", "recipes/iv2_stage1_tiny.yaml", "--random-init", "--epochs", "1"]
    for args, message in (([str(sets["train"]), str(sets["eval"]), "--features", "disk"], "--features must be"),
                          ([str(unlabeled), str(sets["eval"])], "carry no label")):
        result = CliRunner().invoke(app, args + base)
        assert result.exit_code == 2 and message in result.output and result.exception.__class__ is SystemExit


def test_probe_loads_a_run_directory_strictly(labeled, tmp_path):
    """Any objective's run: its export.json says how to rebuild the encoder (here with 2 pooling heads and the tanh
    GELU, which no tensor shape shows), encoder.safetensors holds the weights."""
    from ivtrain.export import write_export
    from ivtrain.models.vit import ViTConfig

    root, sets, _ = labeled
    torch.manual_seed(5)
    enc = InternVideo2(ViTConfig(size="tiny", pool_heads=2, mlp_act="gelu_tanh"), pool_out_dim=32)
    write_export(tmp_path, "iv2_stage1", {"encoder": enc.state_dict()},
                 {**enc.config(), "mean": [0.5] * 3, "std": [0.25] * 3})
    loaded, config = load_encoder(tmp_path)
    assert torch.equal(loaded.blocks[1].attn.qkv.weight, enc.blocks[1].attn.qkv.weight)
    assert loaded.cfg.pool_heads == 2 and loaded.blocks[0].mlp.act.approximate == "tanh"
    assert config["mean"] == [0.5] * 3
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video).pooled, enc.eval()(video).pooled)
    res = run_probe(str(sets["train"]), str(sets["eval"]), run_dir=tmp_path, epochs=5)
    assert res.num_train == 8
    with pytest.raises(FileNotFoundError, match="holds no export.json"):
        load_encoder(tmp_path / "nowhere")


@pytest.mark.parametrize("features", ["cache", "stream"])
def test_probe_refuses_unlabeled_shards(labeled, features):
    root, sets, unlabeled = labeled
    recipe = load_recipe("recipes/iv2_stage1_tiny.yaml")
    with pytest.raises(ValueError, match="carry no label"):
        run_probe(str(unlabeled), str(sets["eval"]), recipe=recipe, random_init=True, epochs=1, features=features)


def test_streamed_tokens_train_the_same_probe_as_cached_ones(labeled):
    """Streaming re-encodes every minibatch instead of keeping the tokens; it must see the same clips in
    the same minibatches, epoch after epoch, and so train the same probe."""
    root, sets, _ = labeled
    encoder, recipe = load_encoder(None, load_recipe("recipes/iv2_stage1_tiny.yaml"), random_init=True, seed=3)
    x, labels = encode_set(encoder, recipe, str(sets["train"]), batch_size=3)
    classes, lookup = class_lookup(labels, labels)
    cached = CachedFeatures(x, torch.tensor([lookup[lb] for lb in labels]), batch_size=3, seed=7)
    streamed = StreamedFeatures(encoder, recipe, str(sets["train"]), lookup, batch_size=3, seed=7,
                                device=torch.device("cpu"))
    for epoch in (0, 1, None):  # 8 clips: 3 + 3 + 2, shuffled differently per epoch, then in order
        a, b = list(cached.batches(epoch)), list(streamed.batches(epoch))
        assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b] and [len(y) for _, y in a] == [3, 3, 2]
        for (xa, _), (xb, _) in zip(a, b):
            torch.testing.assert_close(xb, xa, atol=1e-5, rtol=1e-4)
    assert [y.tolist() for _, y in cached.batches(0)] != [y.tolist() for _, y in cached.batches(1)]
    probes = [train_probe(f, len(classes), x.shape[-1], epochs=6, seed=1) for f in (cached, streamed)]
    for pa, pb in zip(probes[0].parameters(), probes[1].parameters()):
        torch.testing.assert_close(pb, pa, atol=1e-4, rtol=1e-3)


def test_auto_streams_when_the_cache_would_not_fit(labeled, monkeypatch, capsys):
    root, sets, _ = labeled
    recipe = load_recipe("recipes/iv2_stage1_tiny.yaml")
    run = lambda: run_probe(str(sets["train"]), str(sets["eval"]), recipe=recipe, random_init=True, epochs=2)  # noqa: E731
    encoder, _ = load_encoder(None, recipe, random_init=True)
    need = probe_module.cache_bytes(encoder, 16)  # 8 train + 8 eval clips, float32
    monkeypatch.setattr(probe_module, "available_memory_bytes", lambda: 2 * need)
    cached = run()
    monkeypatch.setattr(probe_module, "available_memory_bytes", lambda: 2 * need - 1)
    streamed = run()
    assert (cached.features, streamed.features) == ("cache", "stream")
    assert "streaming, one encoder pass over the train set for each of 2 epochs" in capsys.readouterr().err
    assert streamed.eval_confusion == cached.eval_confusion and streamed.num_eval == cached.num_eval == 8


def test_a_bfloat16_cache_is_half_the_size_and_close(labeled):
    root, sets, _ = labeled
    encoder, recipe = load_encoder(None, load_recipe("recipes/iv2_stage1_tiny.yaml"), random_init=True)
    full, _ = encode_set(encoder, recipe, str(sets["eval"]))
    half, _ = encode_set(encoder, recipe, str(sets["eval"]), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.nbytes * 2 == full.nbytes
    assert full.nbytes == probe_module.cache_bytes(encoder, 8)
    torch.testing.assert_close(half.float(), full, atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="--cache-dtype must be one of"):
        run_probe(str(sets["train"]), str(sets["eval"]), recipe=recipe, random_init=True, cache_dtype="int8")


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
    streamed = run_probe(str(sets["train"]), str(sets["eval"]), recipe=recipe, random_init=True, epochs=40,
                         device="cuda", features="stream")  # tokens never leave the GPU
    assert streamed.features == "stream" and streamed.num_eval == 8 and streamed.train_accuracy >= 0.75


def test_a_run_trained_with_flash_attention_is_probed_where_there_is_none(labeled):
    root, sets, _ = labeled
    recipe = load_recipe("recipes/iv2_stage1_tiny.yaml", ["iv2_stage1.model.attn_backend=flash"])
    encoder, recipe = load_encoder(None, recipe, random_init=True)
    feats, _ = encode_set(encoder, recipe, str(sets["eval"]), device="cpu")
    assert feats.shape[0] == 8 and encoder.backend == "sdpa"
