"""The shard loader: real H.264 mp4s in WebDataset tars, decord/PyAV decoding, sampling,
MultiScaleCrop, corrupt-sample skipping, several workers and exact position resume."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import train_synthetic  # noqa: E402

from ivtrain.config import DataConfig  # noqa: E402
from ivtrain.data.sampling import decode_decord, decode_pyav, sparse_uniform_indices  # noqa: E402
from ivtrain.data.index import ShardIndex, resolve_shards  # noqa: E402
from ivtrain.data.loader import make_loader as loader_of_stream, video_stream  # noqa: E402
from ivtrain.data.transforms import clip_transform, multiscale_crop_box, normalize  # noqa: E402


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rows = list(csv.DictReader(open(train_synthetic.write_motion_dataset(root, per_class=3))))
    return [Path(r["path"]) for r in rows], [r["label"] for r in rows]


@pytest.fixture(scope="module")
def shards(videos, tmp_path_factory):
    paths, labels = videos
    out = tmp_path_factory.mktemp("shards")
    # sample 5 is corrupt: the loader must skip and count it
    return train_synthetic.write_shards(paths, out, "set", labels, per_shard=5, corrupt={5})


def config(shards, **kw):
    base = dict(shards=str(shards), num_frames=8, image_size=32, batch_size=2, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


def make_loader(cfg, seed=0, rank=0, world=1, start=0, epochs=None, keep_last=False, pin_memory=False):
    """(loader, stream) of 8-frame clips of one shard set."""
    stream = video_stream(cfg, cfg.num_frames, seed, rank, world, start, epochs, keep_last=keep_last)
    return loader_of_stream(stream, cfg.num_workers, pin_memory), stream


def position_of(batch) -> int:
    return batch["position"]["sources"]["default"]


def test_shard_sources_resolve_alike(shards):
    by_index = resolve_shards(shards)
    assert len(by_index) == 3
    assert resolve_shards(shards.with_name("set.txt")) == by_index
    assert resolve_shards(shards.parent) == by_index
    with pytest.raises(FileNotFoundError):
        resolve_shards(shards.parent / "missing.wids.json")
    index = ShardIndex(by_index)
    assert len(index) == 12 and index.metadata(0)["label"] in train_synthetic.DIRECTIONS


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shard_index_reads_what_tarfile_extracts_and_is_cached_per_shard(shards, tmp_path, monkeypatch):
    import tarfile

    from ivtrain.data import index as shard_module

    paths, cache = resolve_shards(shards), tmp_path / "cache"
    index = ShardIndex(paths, cache)
    want = []   # (shard, member name) of every mp4, in shard order
    for shard in paths:
        with tarfile.open(shard) as tar:
            want += [(shard, m.name) for m in tar if m.isfile() and m.name.endswith(".mp4")]
    assert len(index) == len(want) == 12
    for i, (shard, name) in enumerate(want):
        with tarfile.open(shard) as tar:
            assert index.read(i, "mp4") == tar.extractfile(name).read()
            assert index.metadata(i) == json.loads(tar.extractfile(name[:-4] + ".json").read())
        assert index.key(i) == name[:-4]
    assert len(list(cache.glob("*.npz"))) == len(paths)

    scanned = []
    scan = shard_module.scan_shard
    monkeypatch.setattr(shard_module, "scan_shard", lambda s: scanned.append(s) or scan(s))
    again = ShardIndex(paths, cache)                    # read back from the cache: no tar scanned
    assert scanned == [] and again.keys.tolist() == index.keys.tolist()
    assert all(np.array_equal(again.offsets[e], index.offsets[e]) for e in ("mp4", "json"))
    assert np.array_equal(again.shard_of, index.shard_of)

    sorted(cache.glob("*.npz"))[0].write_bytes(b"not an npz")   # a damaged cache file costs a scan
    ShardIndex(paths, cache)
    assert len(scanned) == 1

    shared = tmp_path / "shared"                        # two ranks warm a cold cache, a share each (the engine)
    ShardIndex.warm(paths[0::2], shared)
    ShardIndex.warm(paths[1::2], shared)
    assert len(scanned) == 1 + len(paths)
    assert ShardIndex(paths, shared).keys.tolist() == index.keys.tolist() and len(scanned) == 1 + len(paths)

    own = write_tar(tmp_path / "own.tar", {"a.mp4": b"A", "a.json": b'{"label": 1}', "b.mp4": b"BB", "n.txt": b"-"})
    first = ShardIndex([own], cache)
    assert [first.key(i) for i in range(2)] == ["a", "b"] and first.read(1, "mp4") == b"BB"
    assert first.read(1, "json") is None and first.metadata(1) == {} and first.metadata(0) == {"label": 1}
    write_tar(own, {"c.mp4": b"CCC"})                   # rewritten in place: its cached index is stale
    rewritten = ShardIndex([own], cache)
    assert len(rewritten) == 1 and rewritten.key(0) == "c" and rewritten.read(0, "mp4") == b"CCC"

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.warns(UserWarning, match="not writable"):   # a cache that cannot be written costs scans only
        assert len(ShardIndex(paths, blocked)) == 12
    assert len(ShardIndex(paths, None)) == 12


def test_sparse_uniform_sampling():
    assert sparse_uniform_indices(16, 8, None).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    rng = np.random.default_rng(0)
    idx = sparse_uniform_indices(16, 8, rng)
    assert all(2 * i <= j < 2 * i + 2 for i, j in enumerate(idx))  # one frame from each segment
    assert sparse_uniform_indices(3, 8, None).max() == 2           # short videos repeat frames


def test_decord_and_pyav_decode_the_same_frames(videos):
    data = videos[0][0].read_bytes()
    a, b = decode_decord(data, 8, None), decode_pyav(data, 8, None)
    assert a.shape == b.shape == (8, 64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3  # same frames, colour conversion aside


def test_multiscale_crop_and_transform():
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, h, w = multiscale_crop_box(90, 160, [1, 0.875, 0.75, 0.66], 1, rng)
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 160
    frames = np.random.default_rng(1).integers(0, 255, (8, 90, 160, 3), dtype=np.uint8)
    x = clip_transform(frames, 32, True, [1, 0.875], 1, True, rng)
    assert x.shape == (3, 8, 32, 32) and x.dtype == torch.uint8
    centre = clip_transform(frames, 32, False, [1.0], 1, False, None)
    assert centre.shape == (3, 8, 32, 32)
    # evaluation: the centre square of the short side, resized; uint8 until normalized on the device
    square = torch.from_numpy(frames[:, :, 35:125]).permute(0, 3, 1, 2).float()
    want = torch.nn.functional.interpolate(square, size=(32, 32), mode="bilinear", antialias=True)
    assert (centre.permute(1, 0, 2, 3).float() - want).abs().max() <= 1.0
    y = normalize(centre, [0.5] * 3, [0.25] * 3)
    assert y.dtype == torch.float32 and torch.allclose(y, (centre.float() / 255 - 0.5) / 0.25, atol=1e-5)


def collect(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_batches_skip_and_count_corrupt_samples(shards):
    loader, stream = make_loader(config(shards), epochs=1)
    batches = list(loader)
    assert len(batches) == stream.source_stream().segment(0)[1] == 6
    assert sum(b["skipped"].get("undecodable", 0) for b in batches) == 1
    assert sum(len(b["keys"]) for b in batches) == 11
    assert "clip00005" not in [k for b in batches for k in b["keys"]]
    full = [b for b in batches if len(b["keys"]) == 2][0]
    assert full["video"].shape == (2, 3, 8, 32, 32) and full["video"].dtype == torch.uint8
    assert all(lb in train_synthetic.DIRECTIONS for b in batches for lb in b["labels"])


def test_evaluation_keeps_the_partial_last_batch(shards):
    # 12 samples in batches of 5: training drops the last 2 (every step the same size); evaluation keeps them
    _, train_stream = make_loader(config(shards, batch_size=5, shuffle=False), epochs=1)
    loader, stream = make_loader(config(shards, batch_size=5, shuffle=False, train=False), epochs=1, keep_last=True)
    assert train_stream.source_stream().segment(0)[1] == 2 and stream.source_stream().segment(0)[1] == 3
    batches = list(loader)
    assert [len(b["keys"]) + sum(b["skipped"].values()) for b in batches] == [5, 5, 2]
    seen = [k for b in batches for k in b["keys"]]
    assert len(seen) == len(set(seen)) == 11  # every clip once, the corrupt one counted instead


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_loader_pins_batches_for_a_cuda_consumer(shards):
    loader, _ = make_loader(config(shards, num_workers=1), epochs=1, pin_memory=True)
    batch = next(b for b in loader if b["size"])
    assert batch["video"].is_pinned() and batch["video"].dtype == torch.uint8


def test_workers_and_resume_reproduce_the_same_stream(shards):
    reference = collect(make_loader(config(shards))[0], 9)  # crosses an epoch boundary
    two_workers = collect(make_loader(config(shards, num_workers=2))[0], 9)
    assert [position_of(b) for b in reference] == [2, 4, 6, 8, 10, 12, 14, 16, 18]  # 12 clips: the epoch ends at 12
    resumed = collect(make_loader(config(shards, num_workers=2), start=position_of(reference[3]))[0], 5)
    for got, want in zip(two_workers, reference):
        assert got["keys"] == want["keys"] and got["position"] == want["position"]
        assert got["clip_seeds"] == want["clip_seeds"] and len(set(got["clip_seeds"])) == len(got["keys"])
        assert got["size"] == want["size"] and (not got["size"] or torch.equal(got["video"], want["video"]))
    for got, want in zip(resumed, reference[4:]):
        assert got["keys"] == want["keys"]
        assert got["size"] == want["size"] and (not got["size"] or torch.equal(got["video"], want["video"]))
    # the next epoch visits the samples in a new order
    epoch0 = [k for b in reference[:6] for k in b["keys"]]
    epoch1 = [k for b in reference[6:9] for k in b["keys"]]
    assert epoch1 != epoch0[:len(epoch1)]


def test_ranks_get_disjoint_samples(shards):
    keys = []
    for rank in range(2):
        loader, stream = make_loader(config(shards), rank=rank, world=2, epochs=1)
        keys.append({k for b in loader for k in b["keys"]})
    assert not keys[0] & keys[1]


def test_a_position_names_the_same_clips_under_any_world_size_and_batch_size(videos, tmp_path):
    """Two ranks of 2 stop after 2 steps; one rank of 2 resumes at that sample position; then two ranks of 1.
    Together they see every clip of the epoch that the ranks can share evenly, none twice, and each global step
    holds exactly the clips of the same step of a run that never changed (when its global batch is the same)."""
    paths, labels = videos
    shards = train_synthetic.write_shards(paths, tmp_path, "clean", labels, per_shard=5)  # 12 clips, none corrupt
    n = 12

    def step_keys(world, batch_size, start, steps):
        per_rank = [collect(make_loader(config(shards, batch_size=batch_size, train=False), rank=r, world=world,
                                        start=start, epochs=1)[0], steps) for r in range(world)]
        positions = {position_of(b) for rank in per_rank for b in rank[-1:]}
        assert len(positions) == 1  # every rank agrees on where the run stands
        return [sorted(k for rank in per_rank for k in rank[i]["keys"]) for i in range(steps)], positions.pop()

    first, position = step_keys(2, 2, 0, 2)
    assert position == 8
    second, position = step_keys(1, 2, position, 1)
    assert position == 10
    third, position = step_keys(2, 1, position, 1)
    assert position == n  # the end of the epoch: the next one starts afresh
    # a batch of 3 from 8 is the epoch's last: the one clip left over is dropped, as at the end of any epoch
    assert step_keys(1, 3, 8, 1)[1] == n
    seen = [k for step in first + second + third for k in step]
    assert len(seen) == len(set(seen)) == n

    # the same global batch (4 = 2 ranks x 2 = 1 rank x 4) gives the same clips at every step
    one_rank, _ = step_keys(1, 4, 0, 3)
    two_ranks, _ = step_keys(2, 2, 0, 2)
    resumed, _ = step_keys(1, 4, 8, 1)
    assert two_ranks + resumed == one_rank
    # a position at the end of an epoch's shareable part moves on to the next epoch
    _, stream = make_loader(config(shards, batch_size=2), world=2, start=10)
    assert next(stream.source_stream().batches())[0] == 1


def test_clips_of_direction_labelled_sources_are_never_flipped(videos, tmp_path):
    """A source whose labels name directions (SSv2: "moving something from left to right") is never mirrored, as
    the release never flips SSv2; other sources' clips are, half of the time. The shards here say source
    "synthetic": listed in data.no_flip_sources, it is treated as SSv2 is by default."""
    from ivtrain.data.samples import read_sample
    from ivtrain.data.spec import SampleSpec, VideoSpec

    paths, labels = videos
    index = ShardIndex.open(train_synthetic.write_shards(paths, tmp_path, "s", labels, per_shard=12), "off")
    spec = SampleSpec(video=VideoSpec(frames=8, size=32))
    assert DataConfig().no_flip_sources == ["ssv2"]
    mirrored = {}
    for no_flip in ([], ["synthetic"]):
        data = config(index, no_flip_sources=no_flip)
        for i in range(len(index)):
            rng = np.random.default_rng([0, 0, i])        # the sample's own draws, as the loader makes them
            unflipped = clip_transform(decode_decord(index.read(i, "mp4"), 8, rng), 32, True, data.scales,
                                       data.max_distort, False, rng)
            mirrored[tuple(no_flip), i] = not torch.equal(read_sample(index, i, 0, spec, data, seed=0)["video"],
                                                          unflipped)
    assert 2 <= sum(mirrored[(), i] for i in range(len(index))) <= len(index) - 2     # about half
    assert not any(mirrored[("synthetic",), i] for i in range(len(index)))
