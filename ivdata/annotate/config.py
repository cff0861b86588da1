"""Typed VidCap configuration, loaded from recipes/vidcap*.yaml.

Every model is a local path (a dir, a .pt or a .gguf file); a backend that is given no path is off.
`model_name` is what the manifest records as `captions.model` (default: the backend plus the path's
basename), so a corpus annotated on one machine is recognised as done on another.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivkit.typed_yaml import ConfigError, build, read_mapping, set_dotted

__all__ = ["STAGES", "ConfigError", "VidCapConfig", "load_config", "as_dict"]

STAGES = ("asr", "audio", "frames", "fuse")
# backend -> (the module it imports, the ivkit extra that installs it)
BACKEND_MODULES = {"faster-whisper": ("faster_whisper", "asr"), "openai-whisper": ("whisper", None),
                   "llamacpp": ("llama_cpp", "llamacpp"), "transformers": ("transformers", None),
                   "tagging": ("transformers", None), "audio2text": ("transformers", None),
                   "image2text": ("transformers", None), "seq2seq": ("transformers", None)}


def model_id(backend: str, path: str | None, name: str | None) -> str:
    if name:
        return name
    base = Path(path).name if path else "none"
    return f"{backend}:{base}"


@dataclass
class TranslateConfig:
    backend: str = "none"            # none | seq2seq (transformers dir) | llm (the fuse backend below)
    model: str | None = None
    src_lang_codes: dict[str, str] = field(default_factory=dict)   # whisper code -> tokenizer code (e.g. NLLB)
    max_new_tokens: int = 256

    def __post_init__(self):
        if self.backend not in ("none", "seq2seq", "llm"):
            raise ConfigError(f"translate.backend {self.backend!r}: one of none, seq2seq, llm")
        if self.backend == "seq2seq" and not self.model:
            raise ConfigError("translate.backend seq2seq needs translate.model (a local dir)")


@dataclass
class AsrConfig:
    backend: str = "faster-whisper"  # faster-whisper (CTranslate2 dir) | openai-whisper (.pt file)
    model: str | None = None
    name: str | None = None
    compute_type: str = "int8"       # faster-whisper; float16 on CUDA
    beam_size: int = 5
    vad: bool = True
    language: str | None = None      # None: detect
    max_new_tokens: int | None = None  # per 30 s window; None: the backend's own limit
    silence_dbfs: float = -50.0      # below this RMS the clip is recorded as silent, not transcribed
    translate: TranslateConfig = field(default_factory=TranslateConfig)

    def __post_init__(self):
        if self.backend not in ("faster-whisper", "openai-whisper"):
            raise ConfigError(f"asr.backend {self.backend!r}: one of faster-whisper, openai-whisper")

    @property
    def model_name(self) -> str:
        return model_id(self.backend, self.model, self.name)


@dataclass
class AudioCaptionConfig:
    backend: str = "tagging"         # tagging (AudioSet classifier dir) | audio2text (transformers seq2seq dir)
    model: str | None = None
    name: str | None = None
    top_k: int = 3
    threshold: float = 0.3           # tagging: class probability a label needs to enter the caption
    max_new_tokens: int = 48
    silence_dbfs: float = -50.0

    def __post_init__(self):
        if self.backend not in ("tagging", "audio2text"):
            raise ConfigError(f"audio.backend {self.backend!r}: one of tagging, audio2text")

    @property
    def model_name(self) -> str:
        return model_id(self.backend, self.model, self.name)


@dataclass
class FrameCaptionConfig:
    backend: str = "image2text"      # transformers image-to-text dir (VisionEncoderDecoder, BLIP, GIT, ...)
    model: str | None = None
    name: str | None = None
    fps: float = 1.0
    max_frames: int = 30
    max_new_tokens: int = 40
    merge: str = "llm"               # llm (the V prompt through the fuse backend) | rule (no LLM)

    def __post_init__(self):
        if self.backend != "image2text":
            raise ConfigError(f"frames.backend {self.backend!r}: image2text")
        if self.merge not in ("llm", "rule"):
            raise ConfigError(f"frames.merge {self.merge!r}: llm or rule")
        if self.fps <= 0:
            raise ConfigError("frames.fps must be > 0")

    @property
    def model_name(self) -> str:
        return model_id(self.backend, self.model, self.name)


@dataclass
class FuseConfig:
    backend: str = "transformers"    # transformers (causal LM dir) | llamacpp (.gguf) | openai (HTTP endpoint)
    model: str | None = None         # dir / .gguf; for openai: the served model name
    name: str | None = None
    url: str | None = None           # openai: base URL, e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None   # openai: name of the environment variable holding the key (never the key)
    max_new_tokens: int = 96
    temperature: float = 0.0
    batch_size: int = 8
    concurrency: int = 8             # openai: requests in flight
    timeout_s: float = 120.0
    retries: int = 3
    n_ctx: int = 4096                # llamacpp

    def __post_init__(self):
        if self.backend not in ("transformers", "llamacpp", "openai"):
            raise ConfigError(f"fuse.backend {self.backend!r}: one of transformers, llamacpp, openai")
        if self.backend == "openai" and not self.url:
            raise ConfigError("fuse.backend openai needs fuse.url")

    @property
    def model_name(self) -> str:
        if self.backend == "openai" and not self.name:
            return f"openai:{self.model}"
        return model_id(self.backend, self.model, self.name)


@dataclass
class VidCapConfig:
    device: str = "auto"             # auto (cuda when present) | cpu | cuda | cuda:N
    batch_size: int = 8              # clips per work item
    asr: AsrConfig = field(default_factory=AsrConfig)
    audio: AudioCaptionConfig = field(default_factory=AudioCaptionConfig)
    frames: FrameCaptionConfig = field(default_factory=FrameCaptionConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"

    def check_models(self, stages: tuple[str, ...]) -> None:
        """Fail before any work when a requested stage has no local model (nothing downloads) or its
        backend's library is not installed (otherwise every clip would fail the same way)."""
        needed = {"asr": self.asr.model, "audio": self.audio.model, "frames": self.frames.model,
                  "fuse": self.fuse.model if self.fuse.backend != "openai" else "served"}
        if "frames" in stages and self.frames.merge == "llm":
            needed["frames+fuse"] = needed["fuse"]
        backends = {"asr": [self.asr.backend], "audio": [self.audio.backend], "frames": [self.frames.backend],
                    "fuse": [self.fuse.backend]}
        if self.frames.merge == "llm":
            backends["frames"].append(self.fuse.backend)
        if self.asr.translate.backend != "none":
            backends["asr"].append("seq2seq" if self.asr.translate.backend == "seq2seq" else self.fuse.backend)
        for stage in stages:
            for backend in backends.get(stage, []):
                module, extra = BACKEND_MODULES.get(backend, (None, None))
                if not module:
                    continue
                try:        # imported, not only looked up: a wheel whose native library fails counts too
                    importlib.import_module(module)
                except Exception as e:
                    hint = f" (pip install 'ivkit[{extra}]')" if extra else ""
                    raise ConfigError(f"stage {stage}: backend {backend} needs the python module {module}, "
                                      f"which does not import{hint}: {type(e).__name__}: {e}") from None
        for stage, path in needed.items():
            if stage.split("+")[0] not in stages:
                continue
            if not path:
                raise ConfigError(f"stage {stage}: no model given (set it in the recipe or with a flag)")
            if path != "served" and not Path(path).exists():
                raise ConfigError(f"stage {stage}: model path {path} does not exist")
        if "asr" in stages and self.asr.translate.backend == "seq2seq" and not Path(self.asr.translate.model).exists():
            raise ConfigError(f"asr.translate.model {self.asr.translate.model} does not exist")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> VidCapConfig:
    """Read a vidcap recipe and apply dotted overrides (e.g. {"asr.model": "/models/tiny.en"})."""
    data: dict = {}
    if path is not None:
        data = read_mapping(path)
        data = data.get("vidcap", data)
        # model paths in a recipe are relative to the recipe's directory unless absolute
        for sec in ("asr", "audio", "frames", "fuse"):
            section = data.get(sec)
            m = section.get("model") if isinstance(section, dict) else None
            if isinstance(m, str) and m.startswith(("./", "../")):
                section["model"] = str((Path(path).parent / m).resolve())
    for k, v in (overrides or {}).items():
        if v is not None:              # a CLI flag left unset keeps the recipe's value
            set_dotted(data, k, v)
    return build(VidCapConfig, data)


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
