"""The trainer core with an objective that is not stage 1 (tests/train_toy_objective.py): a weighted mixture of three
shard sets delivering video, FLAC audio, caption tokens and images; one and two processes under ZeRO 1; exact
resume after SIGKILL with every source's position restored; padding and masks where lengths differ; frozen towers
kept out of the optimizer and the checkpoints; bad input refused before any step with one line."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import train_synthetic  # noqa: E402
from mixture_sets import WORDS, build_captioned, write_mixed_shards, write_tokenizer  # noqa: E402

@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    from ivdata.media.synth import make_video

    root = tmp_path_factory.mktemp("mixture")
    tone = [make_video(root / "tone" / f"t{i}.mp4", seconds=2.5, audio="tone", size=(64, 48), seed=i)
            for i in range(6)]
    motion_rows = train_synthetic.write_motion_dataset(root / "motion", per_class=2)
    motion = [Path(line.split(",")[0]) for line in motion_rows.read_text().splitlines()[1:]]
    sources = {"av": build_captioned("av", tone, root / "home", "web", 1),
               "motion": build_captioned("motion", motion, root / "home", "V", 2),
               "mixed": write_mixed_shards(root / "mixed", motion, 3)}
    tokenizer = write_tokenizer(root / "tokenizer", WORDS)
    return {"root": root, "sources": sources, "tokenizer": tokenizer}


def recipe_file(mixture, path: Path, **section) -> Path:
    sources = [{"name": "av", "shards": str(mixture["sources"]["av"]), "weight": 2.0},
               {"name": "motion", "shards": str(mixture["sources"]["motion"]), "weight": 1.0},
               {"name": "mixed", "shards": str(mixture["sources"]["mixed"]), "weight": 1.0}]
    recipe = {"objective": "toy_mixture", "objective_module": "train_toy_objective",
              "data": {"sources": sources, "image_size": 32, "num_frames": 4, "batch_size": 4, "num_workers": 1,
                       "index_cache": "off"},
              "toy_mixture": {"tokenizer": str(mixture["tokenizer"]), **section},
              "optim": {"lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 2},
              "train": {"steps": 8, "zero_stage": 1, "seed": 0, "ckpt_every": 3, "tensorboard": False}}
    path.write_text(json.dumps(recipe))
    return path


def env() -> dict:
    from test_train_engine import child_env

    base = child_env()
    return {**base, "PYTHONPATH": f"{ROOT / 'tests'}:{base['PYTHONPATH']}"}


def train(recipe: Path, out: Path, *sets: str, nproc: int = 1, port: int = 29561, expect_rc=0):
    sets = (f"train.out_dir={out}", *sets)
    launch = [sys.executable, "-m", "ivtrain.train"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
         "-m", "ivtrain.train"]
    proc = subprocess.run(launch + [str(recipe)] + [a for s in sets for a in ("--set", s)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def straight(mixture, tmp_path_factory):
    """One process, a global batch of 4, eight uninterrupted steps."""
    work = tmp_path_factory.mktemp("toy_straight")
    out = work / "run"
    train(recipe_file(mixture, work / "toy.json"), out)
    return out


POSITIONS = ("data/av/position", "data/motion/position", "data/mixed/position")


def assert_same_run(got: list[dict], want_dir: Path, atol: float = 1e-5) -> None:
    want = {m["step"]: m for m in records(want_dir)}
    for m in got:
        w = want[m["step"]]
        assert abs(m["loss"] - w["loss"]) <= atol, (m["step"], m["loss"], w["loss"])
        assert math.isclose(m["lr"], w["lr"], rel_tol=1e-9)
        assert [m[k] for k in POSITIONS] == [w[k] for k in POSITIONS], m["step"]   # every source, restored


def test_the_mixture_draws_every_source_and_reports_tokens(straight):
    rows = records(straight)
    assert [m["step"] for m in rows] == list(range(1, 9))
    last = rows[-1]
    assert all(last[k] > 0 for k in POSITIONS), last     # 8 batches of 4 drawn from all three sets
    # 32 samples, plus the tails that cannot fill a batch of 4 at the end of each source's epochs
    assert sum(last[k] for k in POSITIONS) == last["data/position"] >= 32
    assert last["tokens_per_s"] > 0 and "time/normalize_s" in last and last["data/skipped_samples"] == 0
    assert all(math.isfinite(m["loss"]) for m in rows)


def test_one_process_resumes_exactly_after_sigkill(mixture, straight, tmp_path):
    recipe, out = recipe_file(mixture, tmp_path / "toy.json"), tmp_path / "run"
    train(recipe, out, "train.debug_kill_at_step=5", expect_rc=-9)
    proc = train(recipe, out)
    assert "resumed from step00000003: step 3" in proc.stdout
    rows = records(out)
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]
    assert_same_run(rows, straight)


def test_two_processes_train_as_one_and_resume_exactly(mixture, straight, tmp_path):
    """Two ranks of 2 take the global batch of 4 of one process: with the exact-gradient all-gather they compute
    the same losses and updates; killed and resumed, they go on as if never stopped."""
    recipe, out = recipe_file(mixture, tmp_path / "toy.json"), tmp_path / "run"
    train(recipe, out, "data.batch_size=2", "train.debug_kill_at_step=5", nproc=2, port=29563, expect_rc=None)
    train(recipe, out, "data.batch_size=2", nproc=2, port=29564)
    rows = records(out)
    assert [m["step"] for m in rows][-5:] == [4, 5, 6, 7, 8]
    assert_same_run(rows, straight)


def test_frozen_tower_is_not_in_the_optimizer_nor_the_checkpoints(straight):
    from train_toy_objective import WIDTH

    tag = straight / "checkpoints" / "step00000008"
    frozen_params = 2 * WIDTH * 1024 + 1024 + WIDTH
    model_file = next(tag.glob("mp_rank_00_model_states.pt"))
    states = torch.load(model_file, map_location="cpu", weights_only=False)   # DeepSpeed's own file, ours to read
    keys = set(states["module"])
    assert keys and not any(k.startswith("frozen.") for k in keys)
    assert "video.pos_embed" in keys and "text.weight" in keys
    trainable = sum(states["module"][k].numel() for k in keys)
    assert trainable < frozen_params          # the frozen tower is the larger part: its absence shows in the size
    optim = next(tag.glob("*optim_states.pt"))
    # fp32 master weights + two Adam moments of the trainable parameters only (4 bytes each), plus headers
    assert optim.stat().st_size < 12 * trainable + 200_000 < 12 * (trainable + frozen_params)
    assert model_file.stat().st_size < 4 * trainable + 200_000


def test_batches_pad_texts_frames_and_audio_with_masks(mixture, tmp_path):
    from train_toy_objective import ToyMixture

    from ivtrain.config import load_recipe
    from ivtrain.data.index import ShardIndex
    from ivtrain.data.loader import MixtureStream, Source
    from ivtrain.data.text import load_tokenizer

    recipe = load_recipe(recipe_file(mixture, tmp_path / "toy.json"), ["data.batch_size=8", "data.shuffle=false"])
    spec = ToyMixture(recipe, torch.device("cpu")).sample_spec()
    tokenizer = load_tokenizer(str(mixture["tokenizer"]))
    for name in ("mixed", "av"):
        stream = MixtureStream([Source(name, ShardIndex.open(mixture["sources"][name], "off"))], recipe.data, spec,
                               epochs=1, keep_last=True)
        batch = next(iter(stream))
        b = batch["size"]
        video, frames, frame_mask = batch["video"], batch["frames"], batch["frame_mask"]
        assert video.shape == (b, 3, 4, 32, 32) and frame_mask.shape == (b, 4)
        if name == "mixed":   # three images then a clip, twice
            assert frames.tolist() == [1, 1, 1, 4] * 2 and batch["is_image"].tolist() == [True] * 3 + [False] + [True] * 3 + [False]
            assert (video[batch["is_image"]][:, :, 1:] == 0).all()      # padded frames are zeros, masked out
        assert (frame_mask.sum(1) == frames).all()
        caps = batch["captions"]["caption"]
        lengths = caps["mask"].sum(1)
        assert len(set(lengths.tolist())) > 1, "the captions should differ in length"
        for i, text in enumerate(caps["text"]):
            want = tokenizer(text, truncation=True, max_length=12)["input_ids"]
            assert caps["ids"][i, :lengths[i]].tolist() == want
            assert (caps["ids"][i, lengths[i]:] == tokenizer.pad_token_id).all()
        audio, has_audio = batch["audio"], batch["has_audio"]
        if name == "av":        # 2.5 s tone clips: 2 s of 10 ms fbank frames, every clip with audio
            assert has_audio.all() and audio.shape == (b, 198, 16) and batch["audio_mask"].all()
        else:                   # no FLAC members: nothing to pad, no audio
            assert not has_audio.any() and audio.shape[1] == 0


def test_bad_input_fails_before_any_step_with_one_line(mixture, tmp_path):
    recipe = recipe_file(mixture, tmp_path / "toy.json")
    mixed = mixture["sources"]["mixed"]
    cases = [(["toy_mixture.tokenizer=/nonexistent/tok"],
              "cannot start: tokenizer directory /nonexistent/tok does not exist"),
             ([f"data.sources=[{{name: mixed, shards: {mixed}}}]", "toy_mixture.audio_required=true"],
              f"cannot start: source mixed ({mixed}): the objective needs audio (K.flac members) and none of its "
              "8 samples has one"),
             (["iv2_stage1.student_frames=4"],
              "recipe error: unknown key iv2_stage1: a recipe holds objective, objective_module, assets, data, optim, "
              "train and the section of its objective (toy_mixture) - a section for another objective does not "
              "belong in it")]
    for overrides, message in cases:
        out = tmp_path / "bad"
        proc = train(recipe, out, *overrides, expect_rc=2)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "[WARNING]" not in ln]
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert len(lines) == 1, lines
        assert not (out / "metrics.jsonl").exists()


def test_a_batch_some_rank_has_nothing_of_is_left_out_on_every_rank():
    """Ranks must run the same steps (their collectives pair up): a batch whose share on another rank was all
    skipped is left by this rank too, its samples counted, and both go on with the next batch."""
    from types import SimpleNamespace

    from ivtrain.engine.loop import Trainer

    class TwoRanks:   # this rank's flag, and the other rank's: its share of the first batch is empty
        def __init__(self):
            self.other = iter([False, True])

        def all(self, flag):
            return flag and next(self.other)

    batches = iter([{"position": 1, "size": 3, "skipped": {}}, {"position": 2, "size": 2, "skipped": {"no_audio": 1}}])
    trainer = SimpleNamespace(dist=TwoRanks(), position=None)
    skipped: dict = {}
    batch = Trainer._next_batch(trainer, batches, skipped)
    assert batch["position"] == 2 and trainer.position == 2
    assert skipped == {"rank_empty": 3, "no_audio": 1}
