"""Clip embeddings for dedup, leakage and clip-caption similarity: pluggable image(-text) models.

A clip's embedding is the L2-normalised mean of its sampled frames' embeddings. Backends:
  thumb    model-free: each frame as a 16x16 grey thumbnail, zero-mean and unit-norm. Invariant to
           re-encoding, resizing and small trims, so it finds copies of the same footage; it knows
           nothing about semantics. The default for dedup when no model is at hand.
  hf       a transformers CLIP or SigLIP checkpoint from a local directory (AutoModel + AutoProcessor):
           image features for dedup / leakage, and text features for clip-caption similarity.
  openclip an open_clip model from a local directory (open_clip_config.json + weights, the layout of
           open_clip's `local-dir:` schema), with its own evaluation transform and tokenizer.
Model names recorded in the manifest (`embeddings.model`, `scores.model`) are `backend:identity`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ivdata.curate.frames import sample_frames


def l2norm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


class FrameEmbedder(Protocol):
    name: str
    dim: int

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray: ...


class ThumbnailEmbedder:
    """16x16 grey thumbnails (area-averaged), zero-mean and unit-norm per frame: 256-d."""

    def __init__(self, side: int = 16):
        self.side = side
        self.dim = side * side
        self.name = f"thumb:{side}"

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        import cv2
        out = np.empty((len(frames), self.dim), dtype=np.float32)
        for i, f in enumerate(frames):
            grey = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            t = cv2.resize(grey, (self.side, self.side), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
            out[i] = t - t.mean()
        return l2norm(out)


class HFImageTextEmbedder:
    """CLIP / SigLIP from a local transformers directory (config, weights, processor, tokenizer)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = 32):
        import torch
        from transformers import AutoModel

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir}: not a transformers model directory (no config.json)")
        self.torch = torch
        self.device = device
        self.batch_size = batch_size
        self.model = AutoModel.from_pretrained(self.model_dir).to(device).eval()
        if not hasattr(self.model, "get_image_features"):
            raise ValueError(f"{self.model_dir}: {type(self.model).__name__} is not an image-text model "
                             "(need CLIP- or SigLIP-style get_image_features)")
        self.image_processor, self.tokenizer = _load_processors(self.model_dir)
        self.name = f"hf:{self.model_dir.name}"
        cfg = self.model.config
        self.dim = int(getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size)
        # SigLIP is trained with padding to max_length; CLIP with dynamic padding.
        self._text_padding = "max_length" if "siglip" in type(self.model).__name__.lower() else True

    @staticmethod
    def _features(out):
        return out if not hasattr(out, "pooler_output") else out.pooler_output

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        torch = self.torch
        outs = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                px = self.image_processor(images=frames[i:i + self.batch_size], return_tensors="pt")["pixel_values"]
                outs.append(self._features(self.model.get_image_features(pixel_values=px.to(self.device))).float().cpu().numpy())
        return l2norm(np.concatenate(outs))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError(f"{self.model_dir}: no tokenizer saved with the model, cannot embed text")
        torch = self.torch
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tok = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt",
                                     padding=self._text_padding, truncation=True,
                                     max_length=self.model.config.text_config.max_position_embeddings)
                tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
                outs.append(self._features(self.model.get_text_features(**tok)).float().cpu().numpy())
        return l2norm(np.concatenate(outs))


class OpenClipEmbedder:
    """open_clip CLIP / SigLIP from a local directory: `encode_image` / `encode_text`, its own transforms."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = 32):
        import torch

        from ivkit.open_clip_tower import load_open_clip  # shared with the trainer's teacher
        self.model_dir = Path(model_dir)
        self.torch, self.device, self.batch_size = torch, device, batch_size
        open_clip, self.model, self.transform, _ = load_open_clip(self.model_dir, device)
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{self.model_dir}")
        self.name = f"openclip:{self.model_dir.name}"
        self.dim = int(self.model.visual.output_dim)

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        from PIL import Image
        torch, outs = self.torch, []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                px = torch.stack([self.transform(Image.fromarray(f)) for f in frames[i:i + self.batch_size]])
                outs.append(self.model.encode_image(px.to(self.device)).float().cpu().numpy())
        return l2norm(np.concatenate(outs))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        torch, outs = self.torch, []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[i:i + self.batch_size]).to(self.device)
                outs.append(self.model.encode_text(tokens).float().cpu().numpy())
        return l2norm(np.concatenate(outs))


def model_spec(model_dir: str | Path) -> str:
    """The embedder spec of a model directory: openclip: when it is an open_clip export, else hf:."""
    return f"{'openclip' if (Path(model_dir) / 'open_clip_config.json').is_file() else 'hf'}:{model_dir}"


def _load_processors(model_dir: Path):
    """(image processor, tokenizer or None): a full processor when saved, else the image part alone
    (an image-only export is enough for dedup and aesthetic scores)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    try:
        proc = AutoProcessor.from_pretrained(model_dir)
        if hasattr(proc, "image_processor"):
            return proc.image_processor, getattr(proc, "tokenizer", None)
    except (OSError, ValueError, TypeError):
        pass
    image = AutoImageProcessor.from_pretrained(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError):
        tok = None
    return image, tok


def embedder_name(spec: str) -> str:
    """The name a spec's embeddings are recorded under, without loading the model."""
    kind, _, arg = spec.partition(":")
    if kind == "thumb":
        return f"thumb:{int(arg) if arg else 16}"
    if kind in ("hf", "openclip"):
        return f"{kind}:{Path(arg.rstrip('/')).name}"
    raise ValueError(f"unknown embedder {spec!r}: use thumb[:SIDE], hf:MODEL_DIR or openclip:MODEL_DIR")


def make_embedder(spec: str, device: str = "cpu") -> FrameEmbedder:
    """`thumb`, `thumb:16`, `hf:/path/to/model_dir` or `openclip:/path/to/model_dir`."""
    kind, _, arg = spec.partition(":")
    if kind == "thumb":
        return ThumbnailEmbedder(int(arg) if arg else 16)
    if kind in ("hf", "openclip"):
        if not arg:
            raise ValueError(f"{kind} embedder needs a model directory: {kind}:/path/to/clip")
        return (HFImageTextEmbedder if kind == "hf" else OpenClipEmbedder)(arg, device=device)
    raise ValueError(f"unknown embedder {spec!r}: use thumb[:SIDE], hf:MODEL_DIR or openclip:MODEL_DIR")


_CACHE: dict = {}


def cached_embedder(spec: str, device: str = "cpu") -> FrameEmbedder:
    """One model per process (stage workers call this for every item)."""
    if (spec, device) not in _CACHE:
        _CACHE[(spec, device)] = make_embedder(spec, device)
    return _CACHE[(spec, device)]


def clip_embedding(embedder: FrameEmbedder, path: str, num_frames: int = 8) -> np.ndarray:
    """One clip -> one unit vector (mean of its frames' unit embeddings, renormalised)."""
    return l2norm(embedder.embed_frames(sample_frames(path, num_frames)).mean(axis=0))
