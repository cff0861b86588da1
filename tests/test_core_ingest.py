"""Ingest: lists with per-row metadata, http(s) downloads with limits and resume, idempotent ids."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest

from ivdata import pipeline
from ivdata.media.synth import make_video
from ivdata.stages.ingest import SourceError, expand_sources, video_id_for


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support (the stdlib handler has none)."""
    ranges: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        RangeHandler.ranges.append(rng)
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


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
