"""Frame sampling and decoding of one mp4 held in memory.

Sparse uniform sampling (TSN style): the clip is cut into T equal segments and one frame is
taken from each, at a random place in training and at the middle in evaluation. decord decodes;
PyAV takes over for files decord cannot read.
"""
from __future__ import annotations

import io

import numpy as np


def sparse_uniform_indices(num_frames_in_video: int, num_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """Indices of `num_samples` frames spread over `num_frames_in_video`; rng None -> segment middles."""
    if num_frames_in_video <= 0:
        raise ValueError("video has no frames")
    seg = num_frames_in_video / num_samples
    starts = np.arange(num_samples) * seg
    offsets = rng.random(num_samples) * seg if rng is not None else np.full(num_samples, seg / 2.0)
    return np.minimum((starts + offsets).astype(np.int64), num_frames_in_video - 1)


def decode_decord(data: bytes, num_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    idx = sparse_uniform_indices(len(reader), num_samples, rng)
    return reader.get_batch(idx.tolist()).asnumpy()


def decode_pyav(data: bytes, num_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """Decode every frame (short clips) and pick the sampled ones."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    idx = sparse_uniform_indices(len(frames), num_samples, rng)
    return np.stack([frames[i] for i in idx])


def decode_clip(data: bytes, num_samples: int, rng: np.random.Generator | None) -> tuple[np.ndarray, str]:
    """(T, H, W, 3) uint8 frames and the name of the decoder that produced them."""
    try:
        return decode_decord(data, num_samples, rng), "decord"
    except Exception as decord_error:  # decord fails on some containers/codecs: fall back to FFmpeg via PyAV
        try:
            return decode_pyav(data, num_samples, rng), "pyav"
        except Exception as pyav_error:
            raise ValueError(f"undecodable video (decord: {decord_error!s:.120}; pyav: {pyav_error!s:.120})") from pyav_error
