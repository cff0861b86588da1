"""InternVideo2 stage 2 trained by the engine (`python -m ivtrain.train`) on shard sets made by the data engine: captioned
clips (V), captioned clips with FLAC audio one of which lacks its AVS caption (feeding the audio-visual
losses too), and an image-text set (hand-written in the shard format, images with `web` captions and a few clips);
one and two processes under ZeRO 1 and 2, exact resume after SIGKILL; samples lacking the caption kind their
source's losses read skipped and counted; a text directory without cross-attention weights reported by name."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import train_synthetic  # noqa: E402
from mixture_sets import build_captioned, write_mixed_shards  # noqa: E402
from stage2_fixtures import write_stage1_export  # noqa: E402
from test_train_core import env, records, train  # noqa: E402,F401

POSITIONS = ("data/motion/position", "data/av/position", "data/images/position")
LOSS_KEYS = ("loss/vtc", "loss/vtm", "loss/mlm", "loss/avtc", "loss/avtm", "loss/avmlm")


@pytest.fixture(scope="module")
def stage2_data(tmp_path_factory):
    from ivdata.media.synth import make_video

    from ivtrain.objectives import write_tiny_assets

    root = tmp_path_factory.mktemp("stage2")
    motion_rows = train_synthetic.write_motion_dataset(root / "motion", per_class=1)
    motion = [Path(line.split(",")[0]) for line in motion_rows.read_text().splitlines()[1:]]
    tone = [make_video(root / "tone" / f"t{i}.mp4", seconds=2.5, audio="tone", size=(64, 48), seed=i)
            for i in range(6)]
    sources = {"motion": build_captioned("motion", motion, root / "home", "V", 2),
               "av": build_captioned("av", tone, root / "home", "V", 1, also={"AVS": 6}),
               "images": write_mixed_shards(root / "images", motion, 3, count=8, clip_every=4)}
    assets = root / "assets"
    write_tiny_assets(assets)
    return {"root": root, "sources": sources, "assets": assets,
            "stage1": write_stage1_export(root / "stage1_run", assets)}


def recipe_file(data, path: Path, **section) -> Path:
    sources = [{"name": n, "shards": str(data["sources"][n]), "weight": w}
               for n, w in (("motion", 1.0), ("av", 2.0), ("images", 1.0))]
    assets = data["assets"]
    recipe = {"objective": "iv2_stage2", "assets": str(assets),
              "data": {"sources": sources, "image_size": 32, "num_frames": 4, "batch_size": 4, "num_workers": 1,
                       "index_cache": "off"},
              "iv2_stage2": {"vision": {"init": str(data["stage1"]), "model": {"size": "tiny", "image_pos_embed": True}},
                             "text": {"path": str(assets / "tiny_bert"), "fusion_layer": 2, "max_length": 16},
                             "audio": {"path": str(assets / "tiny_beats"), "seconds": 2.0, "num_mel_bins": 64},
                             "embed_dim": 32, "av_concat_dim": 48,
                             "loss": {"avtc": 1.0, "avtm": 1.0, "avmlm": 1.0},
                             "captions": {"default": ["V", "web"], "avtc": ["AVS"], "avtm": ["AVS"], "avmlm": ["AVS"]},
                             "sources": {"av": ["vtc", "vtm", "mlm", "avtc", "avtm", "avmlm"]}, **section},
              "optim": {"lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 2},
              "train": {"steps": 6, "zero_stage": 1, "seed": 0, "ckpt_every": 3, "tensorboard": False}}
    path.write_text(json.dumps(recipe))
    return path


@pytest.fixture(scope="module")
def straight(stage2_data, tmp_path_factory):
    """One process, ZeRO 1, a global batch of 4, six uninterrupted steps."""
    work = tmp_path_factory.mktemp("stage2_straight")
    out = work / "run"
    proc = train(recipe_file(stage2_data, work / "s2.json"), out)
    return {"out": out, "stdout": proc.stdout}


def assert_same_steps(got: list[dict], want: list[dict], atol: float) -> None:
    want = {m["step"]: m for m in want}
    for m in got:
        w = want[m["step"]]
        for key in ("loss",) + LOSS_KEYS:
            if key in w:
                assert abs(m[key] - w[key]) <= atol, (m["step"], key, m[key], w[key])
        assert math.isclose(m["lr"], w["lr"], rel_tol=1e-9)
        assert [m[k] for k in POSITIONS] == [w[k] for k in POSITIONS], m["step"]
        assert m.get("data/skipped/no_caption") == w.get("data/skipped/no_caption"), m["step"]


def assert_resumed_exactly(rows: list[dict], straight_dir: Path, killed_after: int = 5, resumed_at: int = 3) -> None:
    """The second life replays the steps after its checkpoint as the first life took them (to 1e-5: the same
    world size takes the same float operations), and the whole run is the one-process run's (to 1e-4: another
    number of processes sums the same terms in another order, which Adam carries on over the steps)."""
    first = rows[:killed_after]
    second = rows[killed_after:]
    assert [m["step"] for m in first] == list(range(1, killed_after + 1))
    assert [m["step"] for m in second][0] == resumed_at + 1
    assert_same_steps([m for m in second if m["step"] <= killed_after], first, atol=1e-5)
    assert_same_steps(first + second, records(straight_dir), atol=1e-4)


def test_stage2_trains_on_the_mixture_and_skips_samples_without_the_caption(straight):
    rows = records(straight["out"])
    assert [m["step"] for m in rows] == list(range(1, 7))
    assert all(math.isfinite(m["loss"]) for m in rows)
    assert all(m[k] > 0 for k in POSITIONS for m in rows[-1:])          # every source drawn
    av_steps = [m for m in rows if "loss/avtc" in m]
    assert av_steps and all(all(k in m for k in LOSS_KEYS) for m in av_steps)
    # the av set's clips without an AVS caption were skipped and counted, not trained on, and not a crash
    assert rows[-1]["data/skipped/no_caption"] > 0 and rows[-1]["data/skipped_samples"] >= rows[-1]["data/skipped/no_caption"]
    assert rows[-1]["tokens_per_s"] > 0 and rows[-1]["samples_per_s"] > 0 and "time/masks_s" in rows[-1]
    # the stage-1 export initialized the vision tower; the tiny BERT's fusion layers got new cross attention,
    # reported by name
    out = straight["stdout"]
    assert "vision tower from" in out and "missing from checkpoint" not in out and "not in model" not in out
    assert "names: bert.encoder.layer.{2,3}.crossattention.*" in out
    meta = json.loads((straight["out"] / "export.json").read_text())
    assert meta["objective"] == "iv2_stage2" and set(meta["artifacts"]) == {"encoder", "stage2"}


def test_two_processes_zero2_train_as_one_and_resume_exactly_after_sigkill(stage2_data, straight, tmp_path):
    recipe, out = recipe_file(stage2_data, tmp_path / "s2.json"), tmp_path / "run"
    sets = ("data.batch_size=2", "train.zero_stage=2")
    train(recipe, out, *sets, "train.debug_kill_at_step=5", nproc=2, port=29571, expect_rc=None)
    assert not (out / "export.json").exists()
    train(recipe, out, *sets, nproc=2, port=29572)
    assert_resumed_exactly(records(out), straight["out"])


@pytest.mark.slow
@pytest.mark.parametrize("nproc, zero", [(1, 1), (1, 2), (2, 1)])
def test_resumes_exactly_after_sigkill(stage2_data, straight, tmp_path, nproc, zero):
    recipe, out = recipe_file(stage2_data, tmp_path / "s2.json"), tmp_path / "run"
    sets = (f"data.batch_size={4 // nproc}", f"train.zero_stage={zero}")
    port = 29580 + 2 * nproc + 4 * zero
    train(recipe, out, *sets, "train.debug_kill_at_step=5", nproc=nproc, port=port, expect_rc=None)
    proc = train(recipe, out, *sets, nproc=nproc, port=port + 1)
    assert "resumed from step00000003: step 3" in proc.stdout
    assert_resumed_exactly(records(out), straight["out"])


def test_a_source_without_the_caption_kind_at_all_stops_before_the_first_step(stage2_data, tmp_path):
    recipe = recipe_file(stage2_data, tmp_path / "s2.json")
    proc = train(recipe, tmp_path / "bad", "iv2_stage2.captions={default: [S]}", expect_rc=2)
    assert "needs a caption of kind S" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def iv(*args):
    import subprocess

    return subprocess.run([sys.executable, "-c", "from cli import app; app()", *args], cwd=ROOT,
                          env={**env(), "IVKIT_PROGRESS": "1"}, capture_output=True, text=True, timeout=600)


def test_retrieval_of_the_trained_run_from_the_command_line(stage2_data, straight, tmp_path):
    run, motion, av = straight["out"], stage2_data["sources"]["motion"], stage2_data["sources"]["av"]
    out = tmp_path / "video.json"
    proc = iv("eval", "retrieval", str(run), str(motion), "--k-test", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result == json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["num_clips"] == 4 and result["media"] == "video" and result["caption_kinds"] == ["V", "web"]
    for key in ("t2v", "v2t", "t2v_rerank", "v2t_rerank"):
        m = result[key]
        assert 0 <= m["r1"] <= m["r5"] <= m["r10"] == 100.0 and 1 <= m["median_rank"] <= 4, (key, m)
    assert "encode clips and captions" in proc.stderr + proc.stdout and "re-rank" in proc.stderr + proc.stdout
    # audio + video: the clip lacking an AVS caption is skipped and counted
    proc = iv("eval", "retrieval", str(run), str(av), "--audio", "--no-rerank", "--out", str(tmp_path / "av.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "av.json").read_text())
    assert result["media"] == "audio+video" and result["num_clips"] == 5 and result["skipped"] == {"no_caption": 1}
    assert "t2v_rerank" not in result
    # not a stage-2 run: one line
    proc = iv("eval", "retrieval", str(stage2_data["stage1"]), str(motion))
    assert proc.returncode == 2 and "retrieval error:" in proc.stderr and "Traceback" not in proc.stderr


def test_convert_writes_a_stage2_run_in_the_released_layout(stage2_data, straight, tmp_path):
    from ivtrain.eval.retrieval import load_run
    from ivtrain.stage2_layout import load_released_stage2

    proc = iv("convert", str(straight["out"]), str(tmp_path / "stage2.pth"), "--to", "stage2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    released = torch.load(tmp_path / "stage2.pth", weights_only=True)["model"]
    assert released["temp"].shape == () and "text_encoder.cls.predictions.decoder.weight" in released
    model, _ = load_run(straight["out"], torch.device("cpu"), init=True)
    report = load_released_stage2(model, released)
    assert report.ok and not report.unused
