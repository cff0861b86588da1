"""S captions: speech recognition with language id, behind one protocol and two Whisper backends.

- faster-whisper (default): a CTranslate2 model dir; Silero VAD on (`vad_filter=True`), without it
  timestamps drift on clips that open with silence.
- openai-whisper: a `.pt` checkpoint loaded with `whisper.load_model(path)`; audio comes decoded
  in-process (never its ffmpeg-CLI `load_audio`); the same Silero VAD blanks non-speech first, which
  keeps timestamps in place and stops the decoder inventing words over noise.
Non-English speech is translated to English by a pluggable translator (translate.py); the original
text and language are kept in the caption's `extra`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from ivdata.annotate.audio import ClipAudio, is_silent
from ivdata.annotate.config import AsrConfig


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    status: str                      # ok | no_audio | silent | no_speech
    text: str = ""                   # English (translated when the speech was not)
    lang: str | None = None
    lang_prob: float | None = None
    segments: list[Segment] = field(default_factory=list)
    original_text: str | None = None  # the untranslated transcript when translation happened
    translator: str | None = None

    def extra(self) -> dict:
        d = asdict(self)
        d.pop("text")
        d.pop("lang")
        return d


class AsrBackend(Protocol):
    def transcribe(self, samples: np.ndarray) -> Transcript: ...


def _join(segments: list[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())


class FasterWhisperAsr:
    def __init__(self, model_dir: str, device: str = "cpu", compute_type: str = "int8", beam_size: int = 5,
                 vad: bool = True, language: str | None = None, max_new_tokens: int | None = None):
        from faster_whisper import WhisperModel
        dev, _, index = device.partition(":")
        self.model = WhisperModel(str(model_dir), device=dev, device_index=int(index or 0), compute_type=compute_type,
                                  local_files_only=True)
        self.beam_size, self.vad, self.language, self.max_new_tokens = beam_size, vad, language, max_new_tokens

    def transcribe(self, samples: np.ndarray) -> Transcript:
        segs, info = self.model.transcribe(samples, language=self.language, beam_size=self.beam_size,
                                           vad_filter=self.vad, condition_on_previous_text=False,
                                           max_new_tokens=self.max_new_tokens)
        segments = [Segment(round(s.start, 3), round(s.end, 3), s.text.strip()) for s in segs]
        text = _join(segments)
        return Transcript("ok" if text else "no_speech", text, info.language,
                          round(float(info.language_probability), 4), segments)


def speech_mask(samples: np.ndarray) -> np.ndarray:
    """Samples outside Silero-VAD speech set to zero (faster-whisper ships the VAD model)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps
    out = np.zeros_like(samples)
    for ts in get_speech_timestamps(samples, VadOptions()):
        out[ts["start"]: ts["end"]] = samples[ts["start"]: ts["end"]]
    return out


class OpenAIWhisperAsr:
    def __init__(self, checkpoint: str, device: str = "cpu", beam_size: int = 5, vad: bool = True,
                 language: str | None = None, max_new_tokens: int | None = None):
        import whisper
        self.whisper = whisper
        self.model = whisper.load_model(checkpoint, device=device)
        self.device, self.beam_size, self.vad, self.language = device, beam_size, vad, language
        self.max_new_tokens = max_new_tokens

    def detect_language(self, samples: np.ndarray) -> tuple[str, float]:
        if not self.model.is_multilingual:
            return "en", 1.0
        w = self.whisper
        mel = w.log_mel_spectrogram(w.pad_or_trim(samples), n_mels=self.model.dims.n_mels).to(self.model.device)
        _, probs = self.model.detect_language(mel)
        lang = max(probs, key=probs.get)
        return lang, float(probs[lang])

    def transcribe(self, samples: np.ndarray) -> Transcript:
        if self.vad:
            samples = speech_mask(samples)
            if not samples.any():
                return Transcript("no_speech")
        lang, prob = (self.language, 1.0) if self.language else self.detect_language(samples)
        limit = {"sample_len": self.max_new_tokens} if self.max_new_tokens else {}
        result = self.model.transcribe(samples, language=lang, fp16=self.device.startswith("cuda"),
                                       beam_size=self.beam_size if self.beam_size > 1 else None, temperature=0.0,
                                       condition_on_previous_text=False, verbose=None, **limit)
        segments = [Segment(round(float(s["start"]), 3), round(float(s["end"]), 3), s["text"].strip())
                    for s in result["segments"]]
        text = _join(segments)
        return Transcript("ok" if text else "no_speech", text, lang, round(prob, 4), segments)


def load_asr(cfg: AsrConfig, device: str = "cpu") -> AsrBackend:
    if not cfg.model:
        raise ValueError("asr: no model path given")
    if cfg.backend == "faster-whisper":
        ct = cfg.compute_type if device.startswith("cuda") or cfg.compute_type != "float16" else "int8"
        return FasterWhisperAsr(cfg.model, device, ct, cfg.beam_size, cfg.vad, cfg.language, cfg.max_new_tokens)
    return OpenAIWhisperAsr(cfg.model, device, cfg.beam_size, cfg.vad, cfg.language, cfg.max_new_tokens)


def transcribe_clip(asr: AsrBackend, audio: ClipAudio, silence_dbfs: float = -50.0, translator=None) -> Transcript:
    """The S result of one clip: explicit empty outcomes for no audio / silence, translation to English."""
    if not audio.has_audio:
        return Transcript("no_audio")
    if is_silent(audio.samples, silence_dbfs):
        return Transcript("silent")
    t = asr.transcribe(audio.samples)
    if t.status == "ok" and t.lang and t.lang != "en" and translator is not None:
        t.original_text = t.text
        t.text = translator.translate([t.text], t.lang)[0]
        t.translator = translator.name
    return t

