"""A captions: what a clip sounds like, from its 16 kHz audio, behind one protocol.

- audio2text: a transformers speech/audio seq2seq model from a local dir (a Whisper-architecture
  audio captioner, a SpeechEncoderDecoder, ...): feature extractor -> generate -> text.
- tagging: a lighter AudioSet-style classifier (AST, BEATs-style heads loaded as
  AutoModelForAudioClassification). AudioSet is multi-label, so classes get independent sigmoid
  probabilities; long clips are scored in windows the model was trained on and each class keeps
  its highest window. The top classes above a threshold become a short sentence.
Clips with no audio or silence are never sent to a model (see caption_clips).
"""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from ivdata.annotate.audio import RATE, ClipAudio, is_silent
from ivdata.annotate.config import AudioCaptionConfig


class AudioCaptioner(Protocol):
    name: str

    def caption(self, clips: list[np.ndarray]) -> list[str]: ...


class AudioToTextCaptioner:
    def __init__(self, model_dir: str, device: str = "cpu", max_new_tokens: int = 48, batch_size: int = 8):
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer
        self.torch = torch
        self.fe = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.device, self.max_new_tokens, self.batch_size = device, max_new_tokens, batch_size
        self.name = f"audio2text:{os.path.basename(os.path.normpath(model_dir))}"

    def caption(self, clips: list[np.ndarray]) -> list[str]:
        out = []
        for i in range(0, len(clips), self.batch_size):
            feats = self.fe(clips[i: i + self.batch_size], sampling_rate=RATE, return_tensors="pt")
            feats = {k: v.to(self.device) for k, v in feats.items() if k in ("input_features", "input_values",
                                                                            "attention_mask")}
            with self.torch.inference_mode():
                gen = self.model.generate(**feats, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += [t.strip() for t in self.tok.batch_decode(gen, skip_special_tokens=True)]
        return out


def tags_to_caption(labels: list[str]) -> str:
    """['Speech', 'Music', 'Dog'] -> 'The audio contains speech, music and dog.'"""
    names = [l.strip().lower() for l in labels if l.strip()]
    if not names:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"The audio contains {listed}."


class AudioTagger:
    def __init__(self, model_dir: str, device: str = "cpu", top_k: int = 3, threshold: float = 0.3,
                 window_s: float = 10.0):
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
        self.torch = torch
        self.fe = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForAudioClassification.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.labels = self.model.config.id2label
        self.device, self.top_k, self.threshold = device, top_k, threshold
        self.window = int(window_s * RATE)
        self.name = f"tagging:{os.path.basename(os.path.normpath(model_dir))}"

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        windows = [samples[i: i + self.window] for i in range(0, max(samples.size, 1), self.window)]
        windows = [w for w in windows if w.size >= RATE // 4] or [samples]   # drop a tail too short to tag
        feats = self.fe(windows, sampling_rate=RATE, return_tensors="pt")
        feats = {k: v.to(self.device) for k, v in feats.items()}
        with self.torch.inference_mode():
            logits = self.model(**feats).logits.float()
        return self.torch.sigmoid(logits).max(dim=0).values.cpu().numpy()

    def tags(self, samples: np.ndarray) -> list[tuple[str, float]]:
        p = self.probabilities(samples)
        order = np.argsort(-p)[: self.top_k]
        chosen = [i for i in order if p[i] >= self.threshold] or list(order[:1])   # always say something
        return [(self.labels[int(i)], round(float(p[i]), 4)) for i in chosen]

    def caption(self, clips: list[np.ndarray]) -> list[str]:
        return [tags_to_caption([name for name, _ in self.tags(s)]) for s in clips]


def load_audio_captioner(cfg: AudioCaptionConfig, device: str = "cpu") -> AudioCaptioner:
    if not cfg.model:
        raise ValueError("audio: no model path given")
    if cfg.backend == "tagging":
        return AudioTagger(cfg.model, device, cfg.top_k, cfg.threshold)
    return AudioToTextCaptioner(cfg.model, device, cfg.max_new_tokens)


def caption_clips(captioner: AudioCaptioner, audios: list[ClipAudio], silence_dbfs: float = -50.0) -> list[tuple[str, str]]:
    """(status, caption) per clip: no_audio and silent are explicit empty outcomes, the rest one batch."""
    out: list[tuple[str, str] | None] = [None] * len(audios)
    todo = []
    for i, a in enumerate(audios):
        if not a.has_audio:
            out[i] = ("no_audio", "")
        elif is_silent(a.samples, silence_dbfs):
            out[i] = ("silent", "")
        else:
            todo.append(i)
    texts = captioner.caption([audios[i].samples for i in todo]) if todo else []
    for i, t in zip(todo, texts):
        out[i] = ("ok" if t else "empty", t)
    return out
