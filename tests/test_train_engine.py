"""`iv train` end to end on CPU: real shards of real mp4s, tiny teachers, DeepSpeed (gloo),
one process and two (torchrun), ZeRO 0-3, gradient accumulation, exact resume after a SIGKILL or a SIGTERM,
and on another number of processes;
where CUDA is present, DeepSpeed bf16 on the GPU (NCCL) with a resume."""
import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import train_synthetic  # noqa: E402

from ivtrain.tiny_teachers import save_tiny_clip_teacher, save_tiny_videomae_teacher  # noqa: E402


def build_shards(root: Path) -> Path:
    """Shards of the labeled motion videos, made by the corpus core (ingest -> probe -> split -> cut -> shard)."""
    from ivdata.pipeline import build_corpus

    corpus = build_corpus("engine", [root / "train.csv"], home=root / "home", shard_maxcount=8, include_labels=True)
    return corpus.wids_index()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    train_synthetic.write_motion_dataset(root, per_class=4)
    index = build_shards(root)
    return {"root": root, "shards": index, "clip": save_tiny_clip_teacher(root / "clip"),
            "videomae": save_tiny_videomae_teacher(root / "videomae")}


def overrides(setup, out_dir, *extra):
    sets = [f"data.shards={setup['shards']}", f"iv2_stage1.teachers.semantic.path={setup['clip']}",
            f"iv2_stage1.teachers.motion.path={setup['videomae']}", f"train.out_dir={out_dir}", "train.steps=6",
            "data.num_workers=1", *extra]
    return [a for s in sets for a in ("--set", s)]


def child_env() -> dict:
    """The trainer's processes import ivtrain from this checkout, and whatever PYTHONPATH already held."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run(args, expect_rc=0):
    env = child_env()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(out_dir):
    return [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]


def tensorboard_scalars(out_dir, tag):
    """(step, value) of one scalar as TensorBoard would plot it (orphaned steps of a crashed life purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(out_dir) / "tensorboard"), purge_orphaned_data=True)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


RECIPE = "recipes/iv2_stage1_tiny.yaml"
BASE = [sys.executable, "-m", "ivtrain.train", RECIPE]


def torchrun(port: int) -> list[str]:
    """BASE under torchrun with two processes (gloo); each test its own port, so none waits on another's."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "ivtrain.train", RECIPE]


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    """The uninterrupted 6-step run (ZeRO 1) that interrupted runs are compared with."""
    out = tmp_path_factory.mktemp("straight")
    run(BASE + overrides(setup, out, "train.zero_stage=1"))
    return out


def assert_same_losses(records, straight_dir, atol=1e-5):
    reference = {m["step"]: m for m in losses(straight_dir)}
    for m in records:
        want = reference[m["step"]]
        for key in ("loss", "loss/semantic", "loss/pooled", "loss/motion"):
            assert abs(m[key] - want[key]) <= atol, (m["step"], key, m[key], want[key])
        assert math.isclose(m["lr"], want["lr"], rel_tol=1e-9), (m["step"], m["lr"], want["lr"])  # the same schedule


def test_one_process_zero1_resumes_exactly_after_sigkill(setup, straight, tmp_path):
    base = BASE
    interrupted = overrides(setup, tmp_path / "resumed", "train.zero_stage=1", "train.ckpt_every=3")
    run(base + interrupted + ["--set", "train.debug_kill_at_step=5"], expect_rc=-9)  # killed after step 5
    proc = run(base + interrupted)
    assert "resumed from step00000003: step 3" in proc.stdout

    records = losses(tmp_path / "resumed")
    first_life, second_life = records[:5], records[5:]
    assert [m["step"] for m in first_life] == [1, 2, 3, 4, 5] and [m["step"] for m in second_life] == [4, 5, 6]
    assert_same_losses(records, straight)
    # TensorBoard shows one value per step: the resumed run's replay of steps 4 and 5 hides the first life's
    tensorboard = tensorboard_scalars(tmp_path / "resumed", "loss")
    assert [step for step, _ in tensorboard] == [1, 2, 3, 4, 5, 6]
    assert [value for _, value in tensorboard] == pytest.approx([m["loss"] for m in records[:3] + second_life])
    # the metrics a run reports
    reference = {m["step"]: m for m in losses(straight)}
    last = reference[6]
    for key in ("samples_per_s", "step_time_s", "time/teachers_s", "time/trainable_s", "tflops_per_s",
                "memory_gb", "data/skipped_samples", "nonfinite_steps", "data/position"):
        assert key in last
    assert last["data/position"] == 12 and last["data/epoch"] == 12 / 16  # 6 steps of 2 of the 16 clips
    assert reference[1]["lr"] < reference[2]["lr"]  # warmup, then cosine
    assert any((straight / "tensorboard").iterdir())
    assert (straight / "encoder.safetensors").stat().st_size > 0 and (straight / "export.json").exists()


def terminate_after_two_steps(args, out: Path) -> tuple[int, str]:
    """Start a run in its own process group and, once two steps are logged, SIGTERM the whole group, as
    torchrun and Slurm do (the loader workers get the signal too). Returns (exit code, output)."""
    env = child_env()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):   # two steps done
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    return proc.returncode, output


def test_sigterm_finishes_the_step_checkpoints_and_the_rerun_continues_exactly(setup, straight, tmp_path):
    out = tmp_path / "terminated"
    args = BASE + overrides(setup, out, "train.zero_stage=1")        # no periodic checkpoints: only at exit
    rc, output = terminate_after_two_steps(args, out)
    assert rc == 0, output[-3000:]
    k = len(losses(out))
    assert 2 <= k < 6 and (out / "checkpoints" / f"step{k:08d}").is_dir()   # stopped early, checkpointed there
    assert f"resumed from step{k:08d}: step {k}" in run(args).stdout
    records = losses(out)
    assert [m["step"] for m in records] == list(range(1, 7))
    assert_same_losses(records, straight)


def test_two_processes_stop_together_on_sigterm_and_resume(setup, tmp_path):
    """torchrun x2 with a loader worker each: SIGTERM to the job's process group; both ranks finish the same
    step, write one checkpoint, and the rerun continues from it to the end."""
    out = tmp_path / "two_terminated"
    args = torchrun(29523) + overrides(setup, out, "train.zero_stage=1", "train.steps=8")
    terminate_after_two_steps(args, out)   # torchrun itself reports the signal with a non-zero exit
    k = len(losses(out))
    tags = sorted(p.name for p in (out / "checkpoints").glob("step*"))
    assert 2 <= k < 8 and tags == [f"step{k:08d}"], (k, tags)
    ckpt = out / "checkpoints" / tags[0]
    assert (ckpt / "rank000_state.pt").exists() and (ckpt / "rank001_state.pt").exists()
    assert f"resumed from step{k:08d}: step {k}" in run(args).stdout
    assert [m["step"] for m in losses(out)] == list(range(1, 9))


def exported(run_dir):
    """Every exported tensor of a run (stage 1: its encoder and its heads)."""
    from ivtrain.convert import load_checkpoint
    return load_checkpoint(run_dir)


@pytest.mark.parametrize("zero", [0, 3])
def test_zero0_and_zero3_resume_exactly_and_match_zero1(setup, straight, tmp_path, zero):
    """One process: no ZeRO and ZeRO-3 (weights partitioned, gathered by hooks) follow the ZeRO-1 run's losses,
    resume after a SIGKILL like it, and export the same weights."""
    out = tmp_path / f"zero{zero}"
    args = BASE + overrides(setup, out, f"train.zero_stage={zero}", "train.ckpt_every=3")
    run(args + ["--set", "train.debug_kill_at_step=4"], expect_rc=-9)
    assert "resumed from step00000003: step 3" in run(args).stdout
    records = losses(out)
    assert [m["step"] for m in records] == [1, 2, 3, 4, 4, 5, 6]
    assert_same_losses(records, straight)
    ours, reference = exported(out), exported(straight)
    assert ours.keys() == reference.keys()
    for k, v in reference.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        torch.testing.assert_close(ours[k], v, rtol=0, atol=1e-5, msg=k)


def test_gradient_accumulation_equals_the_larger_batch_and_resumes(setup, straight, tmp_path):
    """Two micro batches of one clip per step give the straight run's (one batch of two) losses and lr,
    and a run killed mid-way resumes at the right micro batch."""
    out = tmp_path / "accum"
    args = BASE + overrides(setup, out, "train.zero_stage=1", "data.batch_size=1", "train.grad_accum=2",
                            "train.ckpt_every=3", "train.keep_last=1")
    run(args + ["--set", "train.debug_kill_at_step=4"], expect_rc=-9)
    assert "resumed from step00000003: step 3, data position 6" in run(args).stdout
    records = losses(out)
    assert [m["step"] for m in records] == [1, 2, 3, 4, 4, 5, 6]
    assert [m["data/position"] for m in records] == [2, 4, 6, 8, 8, 10, 12]
    assert_same_losses(records, straight)
    assert [p.name for p in (out / "checkpoints").glob("step*")] == ["step00000006"]   # keep_last=1


def test_bf16_training_tracks_fp32(setup, straight, tmp_path):
    """DeepSpeed bf16 (bf16 weights and activations, fp32 master weights in the optimizer) on CPU, under ZeRO 1
    (the ZeRO optimizer) and ZeRO 0 (DeepSpeed's unfused fp16/bf16 wrapper). The two take the same steps: before
    `undo_initialization_step`, ZeRO 0's wrapper took a phantom AdamW step at set-up and its losses ran 4.4 %
    off fp32 by step 6; ZeRO 1's stay within 0.6 %. A killed ZeRO 0 + bf16 run resumes exactly."""
    reference = [m["loss"] for m in losses(straight)]
    runs = {}
    for zero in (0, 1):
        out = tmp_path / f"bf16_zero{zero}"
        run(BASE + overrides(setup, out, f"train.zero_stage={zero}", "train.bf16=true"))
        runs[zero] = [m["loss"] for m in losses(out)]
        assert {v.dtype for v in exported(out).values()} == {torch.bfloat16}
    for ours in runs.values():
        assert ours != reference and all(math.isfinite(x) for x in ours)
        assert all(abs(a - b) <= 0.015 * b for a, b in zip(ours, reference)), (ours, reference)
    assert all(abs(a - b) <= 1e-3 * b for a, b in zip(runs[0], runs[1])), runs
    # ZeRO 0 + bf16 keeps its optimizer state in the model-states file, and the mend runs before a load
    out = tmp_path / "bf16_zero0_resumed"
    args = BASE + overrides(setup, out, "train.zero_stage=0", "train.bf16=true", "train.ckpt_every=3")
    run(args + ["--set", "train.debug_kill_at_step=4"], expect_rc=-9)
    assert "resumed from step00000003: step 3" in run(args).stdout
    records = losses(out)
    assert [m["step"] for m in records] == [1, 2, 3, 4, 4, 5, 6]
    assert_same_losses(records, tmp_path / "bf16_zero0")


@pytest.mark.parametrize("zero", [2, 3])
def test_two_processes_with_torchrun(setup, tmp_path, zero):
    args = torchrun(29517) + overrides(setup, tmp_path / "two", f"train.zero_stage={zero}", "train.steps=4")
    run(args)
    records = losses(tmp_path / "two")
    assert [m["step"] for m in records] == [1, 2, 3, 4]
    assert records[-1]["loss"] < records[0]["loss"]
    ckpt = tmp_path / "two" / "checkpoints" / "step00000004"
    assert (ckpt / "rank000_state.pt").exists() and (ckpt / "rank001_state.pt").exists()
    assert len(list(ckpt.glob("zero_pp_rank_*_optim_states.pt"))) == 2  # optimizer state partitioned over 2 ranks


@pytest.mark.parametrize("zero,bf16", [(2, False), pytest.param(0, False, marks=pytest.mark.slow),
                                       pytest.param(3, False, marks=pytest.mark.slow),
                                       pytest.param(1, True, marks=pytest.mark.slow)])
def test_another_world_size_resumes_exactly(setup, tmp_path, zero, bf16):
    """ZeRO 2 (0 and 3 in test-slow; 0 keeps the optimizer whole, so it loads without conversion), a global batch
    of 4 clips: two ranks of 2 killed after step 3 (checkpoint at 2), one process of 4
    killed after step 5 (checkpoint at 4), then two ranks again to the end. Each change goes through DeepSpeed's
    universal checkpoint, the data through the sample position; the losses, lr and final weights are those of one
    process that ran all six steps. Under bf16 (ZeRO 1, in test-slow) two ranks' gradients, each rounded to bf16
    before they are summed, differ from one process's by rounding, so the match is to bf16 precision (measured:
    6e-4 in loss, one bf16 step in the weights)."""
    common = [f"train.zero_stage={zero}", f"train.bf16={str(bf16).lower()}"]
    loss_atol, weight_atol = (2e-3, 1.6e-2) if bf16 else (1e-5, 1e-5)
    reference = tmp_path / "reference"
    run(BASE + overrides(setup, reference, *common, "data.batch_size=4"))
    out = tmp_path / "changing"
    two = torchrun(29527) + overrides(setup, out, *common, "data.batch_size=2", "train.ckpt_every=2")
    one = BASE + overrides(setup, out, *common, "data.batch_size=4", "train.ckpt_every=2")
    killed = subprocess.run(two + ["--set", "train.debug_kill_at_step=3"], cwd=ROOT, capture_output=True,
                            env=child_env(), timeout=600)
    assert killed.returncode != 0
    proc = run(one + ["--set", "train.debug_kill_at_step=5"], expect_rc=-9)
    converts = zero > 0
    assert ("step00000002 was written by 2 process(es), this run has 1: converting it" in proc.stdout) == converts
    assert "resumed on 1 process(es) what 2 wrote" + (" (via its universal checkpoint)" if converts else "\n") \
        in proc.stdout
    assert "global batch changes" not in proc.stdout
    proc = run(two)
    assert ("step00000004 was written by 1 process(es), this run has 2: converting it" in proc.stdout) == converts
    assert not (out / "checkpoints" / "universal").exists()  # removed once this world saved its own
    records = losses(out)
    assert [m["step"] for m in records] == [1, 2, 3, 3, 4, 5, 5, 6]
    assert_same_losses(records, reference, loss_atol)
    positions = {m["step"]: m["data/position"] for m in losses(reference)}
    assert [m["data/position"] for m in records] == [positions[m["step"]] for m in records]
    ours, want = exported(out), exported(reference)
    for k, v in want.items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=weight_atol, msg=k)


def test_ranks_wait_for_the_conversion_on_the_filesystem_and_hear_of_its_failure(tmp_path):
    """While rank 0 converts, the other ranks poll the checkpoint folder instead of sitting in a collective that
    would time out: they return once the conversion is renamed into place, and raise rank 0's message if it failed."""
    import threading

    from ivtrain.engine import ResumeError, wait_for_conversion

    target, failed = tmp_path / "step00000004", tmp_path / "step00000004.failed"
    (tmp_path / "step00000004.tmp").mkdir()
    timer = threading.Timer(0.3, lambda: (tmp_path / "step00000004.tmp").rename(target))
    timer.start()
    t0 = time.monotonic()
    wait_for_conversion(target, failed, timeout_s=30, poll_s=0.05)
    assert target.is_dir() and 0.25 < time.monotonic() - t0 < 10
    other = tmp_path / "step00000006"
    threading.Timer(0.2, lambda: failed.write_text("ResumeError: ds_to_universal failed")).start()
    with pytest.raises(ResumeError, match="rank 0 could not convert the checkpoint: ResumeError: ds_to_universal"):
        wait_for_conversion(other, failed, timeout_s=30, poll_s=0.05)
    failed.unlink()
    with pytest.raises(ResumeError, match="did not appear within"):
        wait_for_conversion(other, failed, timeout_s=0.3, poll_s=0.05)


def test_corrupt_clips_are_counted_over_all_ranks_and_across_a_resume(setup, tmp_path):
    """Two ranks, one epoch of 16 clips of which 3 are corrupt: each rank skips the corrupt clips of its share,
    and the count logged and checkpointed is the sum over ranks (3), also after a kill and a resume."""
    rows = list(csv.DictReader(open(setup["root"] / "train.csv")))
    corrupt = {1, 6, 11}
    index = train_synthetic.write_shards([Path(r["path"]) for r in rows], tmp_path / "shards", "bad",
                                         [r["label"] for r in rows], per_shard=8, corrupt=corrupt)
    out = tmp_path / "run"
    args = torchrun(29533) + overrides(setup, out, f"data.shards={index}", "train.zero_stage=1", "train.steps=4",
                                       "train.ckpt_every=2")
    killed = subprocess.run(args + ["--set", "train.debug_kill_at_step=3"], cwd=ROOT, capture_output=True,
                            env=child_env(), timeout=600)
    assert killed.returncode != 0
    run(args)
    records = losses(out)
    assert [m["step"] for m in records] == [1, 2, 3, 3, 4]
    counts = [m["data/skipped_samples"] for m in records]
    assert counts[2] == counts[3] and counts == sorted(counts), counts  # step 3 counted the same both times
    assert counts[-1] == len(corrupt) and records[-1]["data/position"] == len(rows), records[-1]


def test_resume_refuses_a_changed_data_order_unless_allowed(setup, straight, tmp_path):
    """A sample position names other clips under another seed (or shard set), so a resume that changes them
    is refused, with what changed, unless train.allow_data_change. Another batch size is not a change of order:
    the run goes on at the same clip, and says that the global batch changed."""
    import shutil

    out = tmp_path / "changed"
    shutil.copytree(straight, out)
    args = BASE + overrides(setup, out, "train.zero_stage=1", "train.steps=8", "train.seed=1")
    proc = run(args, expect_rc=2)
    assert "resume error: the data order differs" in proc.stderr
    assert "seed: checkpoint 0, this run 1" in proc.stderr and "samples: checkpoint" not in proc.stderr
    assert [m["step"] for m in losses(out)] == [1, 2, 3, 4, 5, 6]  # nothing trained, nothing logged
    proc = run(args + ["--set", "train.allow_data_change=true"])
    assert "warning: train.allow_data_change: going on at sample position 12" in proc.stdout
    records = losses(out)
    assert [m["step"] for m in records] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert records[-1]["data/position"] == 16

    out = tmp_path / "batch3"
    shutil.copytree(straight, out)
    proc = run(BASE + overrides(setup, out, "train.zero_stage=1", "train.steps=8", "data.batch_size=3"))
    assert "warning: the global batch changes from 2 to 3 samples a step" in proc.stdout
    # clips 12-14 end the epoch (the 16th cannot fill a batch: dropped); step 8 is the next epoch's first
    assert [m["data/position"] for m in losses(out)][-2:] == [16, 19]


def test_cli_function_one_process_zero2(setup, tmp_path):
    code = "import typer, sys; from ivtrain.cli import train; typer.run(train)"
    run([sys.executable, "-c", code, RECIPE] + overrides(setup, tmp_path / "cli", "train.zero_stage=2",
                                                         "train.steps=3", "train.export=false",
                                                         "train.peak_tflops=0.5"))
    records = losses(tmp_path / "cli")
    assert [m["step"] for m in records] == [1, 2, 3]
    # MFU: the FLOPs of student and teachers per second over the device peak given in the recipe
    assert all(m["mfu"] == pytest.approx(m["tflops_per_s"] / 0.5) and 0 < m["mfu"] < 1 for m in records)
    assert not (tmp_path / "cli" / "export.json").exists()
    # a bad override fails before any work, naming the key
    proc = run([sys.executable, "-c", code, RECIPE, "--set", "optim.lrr=1"], expect_rc=2)
    assert "unknown key optim.lrr" in proc.stderr


def test_nonfinite_micro_batches_are_skipped_and_counted_and_a_diverged_run_stops(setup, tmp_path, monkeypatch):
    """In-process (one Trainer: DeepSpeed keeps its process groups for the life of a process).
    Phase 1: two micro batches poisoned with NaN are dropped, counted, and training goes on.
    Phase 2: from then on every loss is NaN (a broken teacher, a diverged run): the run stops after
    train.max_nonfinite_in_a_row of them with a clear error instead of drawing batches for ever."""
    import torch.distributed as dist

    from ivtrain.config import load_recipe
    from ivtrain.engine import Trainer
    from ivtrain.engine.distributed import _free_port

    torch.set_num_threads(1)
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", str(_free_port()))):
        monkeypatch.setenv(key, value)
    sets = overrides(setup, tmp_path / "nan", "train.steps=3", "train.export=false", "data.num_workers=0",
                     "train.max_nonfinite_in_a_row=4")
    trainer = Trainer(load_recipe(ROOT / RECIPE, sets[1::2]))
    prepare, calls, poison = trainer.objective.prepare, [], {2, 3}

    def poisoned(batch):
        inputs = prepare(batch)
        calls.append(1)
        if len(calls) in poison:
            inputs["video"] = inputs["video"] * float("nan")
        return inputs

    trainer.objective.prepare = poisoned
    try:
        last = trainer.train()
        assert last["nonfinite_steps"] == 2 and len(calls) == 5 and trainer.step == 3
        assert math.isfinite(last["loss"]) and last["skipped_updates"] == 0
        assert all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())
        assert last["data/position"] == 10  # the dropped batches (2 clips each) were consumed, not replayed

        trainer.schedule = dataclasses.replace(trainer.schedule, total_steps=10)
        poison.update(range(6, 100))
        with pytest.raises(RuntimeError, match="4 micro batches in a row gave a NaN/inf loss at step 4"):
            trainer.train()
        assert len(calls) == 9 and trainer.step == 3 and trainer.counters["nonfinite_steps"] == 6
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_zero1_resume_exactly_after_sigkill(setup, tmp_path):
    """Two ranks, ZeRO 1: per-rank data positions and RNG states come back after a kill."""
    def two_ranks(out, *extra):
        return torchrun(29519) + overrides(setup, out, "train.zero_stage=1", "train.ckpt_every=2", *extra)
    run(two_ranks(tmp_path / "straight"))
    proc = subprocess.run(two_ranks(tmp_path / "resumed", "train.debug_kill_at_step=3"), cwd=ROOT, capture_output=True,
                          env=child_env(), timeout=600)
    assert proc.returncode != 0  # a rank was killed
    run(two_ranks(tmp_path / "resumed"))
    straight = {m["step"]: m["loss"] for m in losses(tmp_path / "straight")}
    resumed = losses(tmp_path / "resumed")
    assert [m["step"] for m in resumed][-4:] == [3, 4, 5, 6]
    for m in resumed:
        assert abs(m["loss"] - straight[m["step"]]) <= 1e-5, (m["step"], m["loss"], straight[m["step"]])


def test_datasheet_peak_reads_the_device_variant():
    from ivtrain.devices import datasheet_peak_tflops

    assert datasheet_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert datasheet_peak_tflops("NVIDIA H100 PCIe") == 756.0   # not the SXM part's 989
    assert datasheet_peak_tflops("NVIDIA H200 NVL") == 835.0 and datasheet_peak_tflops("NVIDIA H200") == 989.0
    assert datasheet_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and datasheet_peak_tflops("Tesla T4") is None


@pytest.fixture(scope="module")
def cuda_setup(tmp_path_factory):
    """Shards written straight from the mp4s: the engine's GPU check needs neither DuckDB nor the detectors."""
    root = tmp_path_factory.mktemp("engine_cuda")
    rows = list(csv.DictReader(open(train_synthetic.write_motion_dataset(root, per_class=4))))
    shards = train_synthetic.write_shards([r["path"] for r in rows], root / "shards", "cuda", per_shard=8)
    return {"root": root, "shards": shards, "clip": save_tiny_clip_teacher(root / "clip"),
            "videomae": save_tiny_videomae_teacher(root / "videomae")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed bf16 on a GPU needs CUDA")
def test_cuda_bf16_zero1_trains_and_resumes(cuda_setup, tmp_path):
    gpu = ("train.device=cuda", "train.bf16=true", "train.zero_stage=1")
    straight = tmp_path / "straight"
    run(BASE + overrides(cuda_setup, straight, *gpu))
    reference = {m["step"]: m for m in losses(straight)}
    assert sorted(reference) == [1, 2, 3, 4, 5, 6] and all(math.isfinite(m["loss"]) for m in reference.values())
    assert reference[6]["memory_gb"] > 0 and reference[6]["mfu"] is not None  # an H100/H200/A100 has a known peak
    assert {v.dtype for v in exported(straight).values()} == {torch.bfloat16}
    resumed = tmp_path / "resumed"
    args = BASE + overrides(cuda_setup, resumed, *gpu, "train.ckpt_every=3")
    run(args + ["--set", "train.debug_kill_at_step=5"], expect_rc=-9)
    assert "resumed from step00000003: step 3" in run(args).stdout
    second_life = losses(resumed)[5:]
    assert [m["step"] for m in second_life] == [4, 5, 6]
    for m in second_life:  # schedule and data position exactly; the loss within what GPU kernels' order allows
        want = reference[m["step"]]
        assert m["lr"] == want["lr"] and m["data/position"] == want["data/position"]
        assert abs(m["loss"] - want["loss"]) <= 0.02 * abs(want["loss"]), (m["step"], m["loss"], want["loss"])


def test_a_checkpoint_from_before_sample_positions_resumes_at_the_same_clip():
    """Older checkpoints stored the next batch number under their world size and batch size: two ranks of 2,
    16 clips, so 4 batches an epoch; batch 5 is epoch 1's second, after the first 4 of its clips."""
    from ivtrain.engine import position_from_batch_number

    plan = {"samples": 16, "world": 2, "batch_size": 2}
    assert [position_from_batch_number(b, plan) for b in (0, 3, 4, 5)] == [0, 12, 16, 20]
    assert position_from_batch_number(6, {"samples": 13, "world": 1, "batch_size": 2}) == 13  # 6 a epoch: 12, 1 dropped


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_trainer_that_raises_with_loader_workers_alive_exits(setup, tmp_path, nproc):
    """A run that diverges (lr 1e30: NaN losses) stops with its error while two loader workers per rank are busy
    prefetching: every rank exits non-zero within a bounded time, instead of waiting for ever on a worker that let
    the interpreter's exit SIGTERM pass."""
    args = (BASE if nproc == 1 else torchrun(29541)) + overrides(
        setup, tmp_path / "diverged", "data.num_workers=2", "optim.lr=1e30", "train.max_nonfinite_in_a_row=2",
        "train.steps=20")
    t0 = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and time.monotonic() - t0 < 200
    assert "2 micro batches in a row gave a NaN/inf loss" in proc.stderr


def test_bad_data_and_missing_models_stop_before_deepspeed_with_one_line(setup, tmp_path):
    """A missing teacher directory, a missing shard index, an empty shard set and an unknown model size each stop
    the run before DeepSpeed starts (no checkpoint folder filled, no step), with one line and exit status 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "nothing.tar").write_bytes(b"\0" * 1024)          # a tar with no samples
    cases = [("iv2_stage1.teachers.motion.path=/no/such/videomae", "motion teacher directory /no/such/videomae"),
             (f"data.shards={tmp_path / 'missing.wids.json'}", "shard source"),
             (f"data.shards={empty}", "no samples with a video or image member"),
             ("iv2_stage1.model.size=huge", "unknown ViT size 'huge'")]
    for override, message in cases:
        out = tmp_path / "bad"
        proc = run(BASE + overrides(setup, out, override), expect_rc=2)
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith(("cannot start:", "recipe error:"))]
        assert len(said) == 1 and message in said[0] and "Traceback" not in proc.stderr, (override, proc.stderr)
        assert not (out / "metrics.jsonl").exists() and not list((out / "checkpoints").glob("step*"))


@pytest.mark.slow
def test_two_nodes_train_and_one_node_resumes_exactly(setup, tmp_path):
    """`iv train --nnodes 2 --node-rank R --master-addr A` twice on this machine (two nodes of one process, through
    torchrun's static rendezvous), killed after step 3, then resumed by one node of one process (its universal
    checkpoint): the losses, lr and positions are those of one process that ran all six steps."""
    reference = tmp_path / "reference"
    run(BASE + overrides(setup, reference, "train.zero_stage=1", "data.batch_size=4"))
    out = tmp_path / "nodes"
    cli = [sys.executable, "-c", "from cli import app; app()", "train", RECIPE]
    sets = overrides(setup, out, "train.zero_stage=1", "data.batch_size=2", "train.ckpt_every=2")
    nodes = [subprocess.Popen(cli + sets + ["--set", "train.debug_kill_at_step=3", "--nnodes", "2", "--node-rank",
                                            str(r), "--master-addr", "127.0.0.1", "--master-port", "29571"],
                              cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    for node in nodes:
        node.communicate(timeout=600)
        assert node.returncode != 0                  # each node's process killed itself after step 3
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000002"]
    assert len(list((out / "checkpoints" / "step00000002").glob("rank*_state.pt"))) == 2
    proc = run(cli + overrides(setup, out, "train.zero_stage=1", "data.batch_size=4", "train.ckpt_every=2"))
    assert "resumed on 1 process(es) what 2 wrote (via its universal checkpoint)" in proc.stdout
    records = losses(out)
    assert [m["step"] for m in records] == [1, 2, 3, 3, 4, 5, 6]
    assert_same_losses(records, reference)
    positions = {m["step"]: m["data/position"] for m in losses(reference)}
    assert [m["data/position"] for m in records] == [positions[m["step"]] for m in records]
