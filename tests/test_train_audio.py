"""Audio features the loader computes from a shard's FLAC: Kaldi fbank and Whisper log-mel, on real speech."""
from pathlib import Path

import numpy as np
import pytest

from ivtrain.data.audio import _fbank_filters, audio_features, decode_audio, fbank, log_mel
from ivtrain.data.spec import AudioSpec

SPEECH = Path(__file__).resolve().parent / "data" / "speech_en.flac"


@pytest.fixture(scope="module")
def wave():
    return decode_audio(SPEECH.read_bytes(), 16000)


def test_fbank_equals_transformers_frame_by_frame_computation(wave):
    """The vectorized fbank against transformers' spectrogram with Kaldi's settings (as AST's extractor calls it)."""
    from transformers.audio_utils import spectrogram

    window, filters = _fbank_filters(16000, 128)
    want = spectrogram(wave * 32768.0, window, frame_length=400, hop_length=160, fft_length=512, power=2.0,
                       center=False, preemphasis=0.97, mel_filters=filters, log_mel="log",
                       mel_floor=1.192092955078125e-07, remove_dc_offset=True).T
    got = fbank(wave, 16000, 128)
    assert got.shape == want.shape == (1 + (len(wave) - 400) // 160, 128)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_features_cover_the_first_seconds_and_have_the_documented_shapes(wave):
    data = SPEECH.read_bytes()
    two = audio_features(data, AudioSpec(seconds=2.0, features="fbank", num_mel_bins=64))
    assert tuple(two.shape) == (198, 64)                       # 2 s: 32000 samples, 25 ms windows every 10 ms
    assert tuple(audio_features(data, AudioSpec(seconds=2.0, features="waveform")).shape) == (32000,)
    mel = audio_features(data, AudioSpec(seconds=2.0, features="log_mel", num_mel_bins=80))
    assert mel.shape[1] == 80 and abs(mel.shape[0] - 200) <= 1
    assert float(mel.max()) <= 1.5 and float(mel.max() - mel.min()) <= 2.0 + 1e-6   # Whisper's clamp and scale
    np.testing.assert_allclose(log_mel(wave[:32000]), mel.numpy(), rtol=1e-5, atol=1e-5)


def test_a_mono_flac_at_the_asked_rate_decodes_to_what_the_resampler_gives(tmp_path):
    """The direct path (the data engine's 16 kHz 16-bit FLAC, read without swresample) and the resampler path give
    the same float32 samples; a file at another rate still goes through the resampler."""
    import io

    import av

    data = SPEECH.read_bytes()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.sample_rate, stream.codec_context.format.name) == (16000, "s16")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        want = np.concatenate([r.to_ndarray().reshape(-1) for frame in container.decode(stream)
                               for r in resampler.resample(frame)] + [r.to_ndarray().reshape(-1)
                                                                       for r in resampler.resample(None)])
    np.testing.assert_array_equal(decode_audio(data, 16000), want)
    eight = decode_audio(data, 8000)                       # another rate: resampled to half the samples
    assert abs(len(eight) - len(want) // 2) <= 64 and eight.dtype == np.float32
