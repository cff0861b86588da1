"""The trainer refuses shards that differ from the wids index listing them, instead of training on fewer clips."""
import csv
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import train_synthetic  # noqa: E402

from ivtrain.config import DataConfig  # noqa: E402
from ivtrain.data.index import ShardIndex, resolve_shards  # noqa: E402
from ivtrain.data.loader import video_loader  # noqa: E402


@pytest.fixture
def shards(tmp_path):
    """8 real H.264 clips in 2 shards of 4, with a wids index (nsamples and filesize per shard)."""
    rows = list(csv.DictReader(open(train_synthetic.write_motion_dataset(tmp_path / "videos", per_class=2))))
    return train_synthetic.write_shards([Path(r["path"]) for r in rows], tmp_path / "shards", "set",
                                        [r["label"] for r in rows], per_shard=4)


def config(index: Path) -> DataConfig:
    return DataConfig(shards=str(index), num_frames=8, image_size=32, batch_size=2, num_workers=0, index_cache="off")


def test_whole_shards_load(shards):
    assert len(ShardIndex.open(shards, "off")) == 8


def test_a_shard_cut_at_a_sample_boundary_is_refused_by_name(shards):
    shard = resolve_shards(shards)[1]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    third = members[4]                                   # clip 3 of 4 starts here (2 members a clip)
    shard.write_bytes(shard.read_bytes()[:third.offset])
    with tarfile.open(shard) as tar:                     # still a readable tar, two clips shorter
        assert len(tar.getmembers()) == 4
    for attempt in (lambda: resolve_shards(shards), lambda: ShardIndex.open(shards, "off"),
                    lambda: video_loader(config(shards), 8)):
        with pytest.raises(ValueError, match=f"shard {shard} has {third.offset} bytes, its index"):
            attempt()
    assert len(ShardIndex(resolve_shards(shards.with_name("set.txt")))) == 6   # no index: nothing to check


def test_a_shard_cut_inside_a_member_is_refused_by_name(shards):
    shard = resolve_shards(shards)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"shard {shard} has {len(data) // 2} bytes"):
        video_loader(config(shards), 8)


def test_a_sample_count_that_differs_from_the_index_is_refused(shards):
    """Same size, other count: an index that does not describe these files (or a file replaced in place)."""
    index = json.loads(shards.read_text())
    index["shardlist"][0]["nsamples"] = 5
    shards.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"holds 4 samples .* says 5"):
        ShardIndex.open(shards, "off")
    with pytest.raises(ValueError, match=r"set-000000.tar holds 4 samples"):
        video_loader(config(shards), 8)
