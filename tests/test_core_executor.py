"""The local executor: results from worker processes, failures as values, a crashing worker isolated."""
from __future__ import annotations

import os

import pickle

import counting_tasks
from counting_tasks import CountsSetups
from ivdata.runtime.executor import Executor, WorkFailed, map_unordered


def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    if x == 5:
        os._exit(139)          # what a segfaulting decoder looks like from the parent
    return x * x


def test_pool_results_failures_and_a_crashing_item():
    got = dict(map_unordered(square_or_fail, range(10), workers=2))
    assert sorted(got) == list(range(10))
    assert isinstance(got[3], WorkFailed) and "three is bad" in got[3].reason
    assert isinstance(got[5], WorkFailed) and "crashed" in got[5].reason
    assert all(got[i] == i * i for i in range(10) if i not in (3, 5))
    # The pool is rebuilt after the crash and reused afterwards.
    assert dict(map_unordered(square_or_fail, [6, 7], workers=2)) == {6: 36, 7: 49}


def test_items_sent_to_a_worker_that_died_idle_are_not_lost():
    # A worker can die between two sessions (the OOM killer, say); the next chunk sent to it fails to send. That
    # chunk must go out again to its replacement (a dropped chunk once lost items: 9 of 10 results came back).
    from ivdata.runtime.pool import pool

    assert dict(map_unordered(square_or_fail, [0, 1], workers=2)) == {0: 0, 1: 1}
    for w in pool(2).workers:
        if w is not None:
            w.proc.kill()
            w.proc.join()
    got = dict(map_unordered(square_or_fail, [0, 1, 2, 4, 6, 7, 8, 9], workers=2))
    assert got == {0: 0, 1: 1, 2: 4, 4: 16, 6: 36, 7: 49, 8: 64, 9: 81}


def test_each_pool_worker_gets_the_task_once_and_sets_it_up_once_not_per_item():
    before = counting_tasks.PICKLED
    with Executor("local", workers=2).session(CountsSetups(payload_bytes=1 << 20)) as session:
        got = dict(session.map(range(2000)))
    assert counting_tasks.PICKLED - before == 1          # pickled once for the session, not once per item
    assert sorted(got) == list(range(2000))
    pids = {pid for pid, _, _ in got.values()}
    assert all(setups == 1 and model == f"loaded in {pid}" for pid, setups, model in got.values())
    assert session.counts.worker_setups == len(pids) == 2


def test_inline_runs_setup_once_and_not_at_all_without_items():
    before = counting_tasks.SETUPS
    with Executor("local", workers=0).session(CountsSetups()) as session:
        assert dict(session.map([])) == {}
        assert counting_tasks.SETUPS == before
        got = dict(session.map(range(50)))
    assert counting_tasks.SETUPS == before + 1 and {s for _, s, _ in got.values()} == {before + 1}


def test_an_ingest_stage_ships_its_configuration_not_its_rows(tmp_path):
    from ivdata.pipeline import open_or_init
    from ivdata.stages.ingest import IngestStage
    corpus = open_or_init("c", tmp_path)
    rows = [{"path": str(tmp_path / f"v{i}.mp4"), "caption": f"a caption of clip {i}", "start": 0, "end": 2}
            for i in range(10_000)]
    shipped = len(pickle.dumps(IngestStage(corpus, rows)))
    assert shipped < 4096, shipped               # the rows stay with the writer: it was 2.18 MB at 10k rows


def test_model_stages_ask_for_a_gpu_per_worker_exactly_when_their_models_run_on_one(tmp_path):
    from ivdata.annotate.config import load_config
    from ivdata.pipeline import open_or_init
    from ivdata.stages.annotate import FrameCaptionStage
    from ivdata.stages.score import ScoreConfig, ScoreStage
    corpus = open_or_init("c", tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"\0" * (3 << 20))
    for device, gpus in (("cpu", 0), ("cuda", 1), ("cuda:1", 1)):
        score = ScoreStage(corpus, ScoreConfig(metrics=["clip_text_sim"], model_dir=str(model), device=device))
        assert score.resources().gpus == gpus
        frames = FrameCaptionStage(corpus, load_config(None, {"device": device, "frames.model": str(model)}))
        assert frames.resources().gpus == gpus
        assert frames.resources().memory_mb == 3          # about what its weights take
    assert ScoreStage(corpus, ScoreConfig(metrics=["motion"], device="cuda")).resources().gpus == 0
