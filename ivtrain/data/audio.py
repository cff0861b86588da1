"""A clip's audio (the shard's `K.flac`, 16 kHz mono as the data engine writes it) as the features audio towers take.

- fbank: Kaldi's log mel filterbank (25 ms Povey windows every 10 ms, pre-emphasis 0.97, DC removed, 512-point
  FFT, power spectrum, mel scale 1127 ln(1 + f / 700), floor at float32 eps), what BEATs and AST read: the window
  and filters are transformers' audio_utils' (as AST's feature extractor uses them without torchaudio).
- log_mel: Whisper's (25 ms Hann windows every 10 ms, Slaney mel filters, log10, clamped to 8 below the
  maximum, scaled (x + 4) / 4).
- waveform: the samples themselves.
Every kind covers the clip's first `seconds`; shorter audio gives fewer frames (the collate pads and masks).
"""
from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import torch

from ivtrain.data.spec import AudioSpec


# sample formats read without a resampler when a file is already mono at the asked rate (the data engine's 16 kHz
# 16-bit FLAC): the same float32 values swresample gives (x / 32768), in a third of the time
_SCALE = {"s16": 32768.0, "s16p": 32768.0, "flt": 1.0, "fltp": 1.0}


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sample_rate` (resampled when the file has another rate)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx.sample_rate == sample_rate and ctx.layout.nb_channels == 1 and ctx.format.name in _SCALE:
            chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
            scale = np.float32(_SCALE[ctx.format.name])
            return (np.concatenate(chunks).astype(np.float32) / scale) if chunks else np.zeros(0, np.float32)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [r.to_ndarray().reshape(-1) for frame in container.decode(stream) for r in resampler.resample(frame)]
        chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


@functools.lru_cache(maxsize=8)
def _fbank_filters(sample_rate: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    from transformers.audio_utils import mel_filter_bank, window_function

    window = window_function(400, "povey", periodic=False)
    with warnings.catch_warnings():   # 128 bins over 257 FFT bins leave the lowest filters empty, as in Kaldi itself
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        filters = mel_filter_bank(num_frequency_bins=257, num_mel_filters=bins, min_frequency=20.0,
                                  max_frequency=sample_rate // 2, sampling_rate=sample_rate, norm=None,
                                  mel_scale="kaldi", triangularize_in_mel_space=True)
    return window, filters


@functools.lru_cache(maxsize=8)
def _whisper_filters(sample_rate: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    from transformers.audio_utils import mel_filter_bank, window_function

    return window_function(400, "hann"), mel_filter_bank(num_frequency_bins=201, num_mel_filters=bins,
                                                         min_frequency=0.0, max_frequency=sample_rate / 2,
                                                         sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")


KALDI_FLOOR = 1.192092955078125e-07   # float32 epsilon: Kaldi's floor under the log


def fbank(wave: np.ndarray, sample_rate: int = 16000, bins: int = 128) -> np.ndarray:
    """(frames, bins) Kaldi fbank of float samples in [-1, 1] (scaled to 16-bit range first, as Kaldi reads PCM).

    All frames at once: transformers' `spectrogram` (the reference this is tested against, with the same window
    and filters) computes it frame by frame in Python, 50 ms a 2 s clip here, which made it the loader's largest
    cost per audio sample; this is about a millisecond (torch's FFT and matmul, in float64 as Kaldi computes)."""
    window, filters = _fbank_filters(sample_rate, bins)
    if len(wave) < 400:
        return np.zeros((0, bins), np.float32)
    frames = torch.from_numpy(np.asarray(wave, np.float64) * 32768.0).unfold(0, 400, 160)   # (frames, 400)
    frames = frames - frames.mean(dim=1, keepdim=True)                       # remove the DC offset
    frames = torch.cat([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], dim=1)
    spec = torch.fft.rfft(frames * torch.from_numpy(window), n=512)         # (frames, 257)
    power = spec.real ** 2 + spec.imag ** 2
    return torch.log(torch.clamp(power @ torch.from_numpy(filters), min=KALDI_FLOOR)).float().numpy()


def log_mel(wave: np.ndarray, sample_rate: int = 16000, bins: int = 80) -> np.ndarray:
    """(frames, bins) Whisper log-mel of float samples."""
    from transformers.audio_utils import spectrogram

    window, filters = _whisper_filters(sample_rate, bins)
    spec = spectrogram(wave, window, frame_length=400, hop_length=160, power=2.0, mel_filters=filters,
                       log_mel="log10")[:, :-1]
    spec = np.maximum(spec, spec.max() - 8.0) if spec.size else spec
    return ((spec + 4.0) / 4.0).T.astype(np.float32)


def audio_features(data: bytes, spec: AudioSpec) -> torch.Tensor:
    """The features `spec` asks for, of the first `spec.seconds` of a FLAC (or any audio) member."""
    wave = decode_audio(data, spec.sample_rate)[: int(round(spec.seconds * spec.sample_rate))]
    if spec.features == "waveform":
        return torch.from_numpy(wave)
    if spec.features == "fbank":
        return torch.from_numpy(fbank(wave, spec.sample_rate, spec.num_mel_bins))
    return torch.from_numpy(log_mel(wave, spec.sample_rate, spec.num_mel_bins))
