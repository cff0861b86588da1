"""Clip embeddings for dedup, leakage and clip-caption similarity: pluggable image(-text) models.

A clip's embedding is one unit vector pooled from its sampled frames (by default the L2-normalised mean
of the frames' embeddings). Backends:
  thumb    model-free (LayoutEmbedder, recorded as thumb:v2): coarse, blurred maps of brightness,
           gradient texture and colour, made mirror-symmetric. Finds copies of the same footage:
           re-encodes, rescales, trims, horizontal flips and crops of 5-15 %; it knows nothing about
           semantics. The default for dedup when no model is at hand. `thumb:SIDE` is the earlier grey
           SIDE x SIDE thumbnail (recorded as thumb:SIDE), which misses flips and crops.
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
    """The first model-free embedder (`thumb:SIDE`): SIDE x SIDE grey thumbnails (area-averaged), zero-mean
    and unit-norm per frame. Finds re-encodes, resizes and trims, but a mirrored copy scores about -0.4
    and a 12 % crop about 0.74: kept for manifests embedded with it, superseded by LayoutEmbedder."""

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


class LayoutEmbedder:
    """Model-free and mirror-invariant, tolerant of crops: where a frame is bright, textured and coloured.

    Each frame is shrunk to 64 x 64 and described by three coarse maps, blurred so that content moving by
    a few percent of the frame (a crop of 5-15 %) changes them little:
      luma     8 x 8 brightness layout
      texture  4 x 4 layout of gradient energy in 4 orientation bins, pooled over centred windows of 100,
               84 and 69 % of the frame, so that a centred zoom changes it little
      colour   4 x 4 layout of the two chroma channels (Cr, Cb)
    Every map is zero-mean per channel, then averaged with its left-right mirror (orientation bins
    swapped as a mirror swaps them) and cut to its left half: a clip and its mirror image embed alike.
    A clip's maps are averaged over its frames, each map unit-normalised and weighted.

    The last component is a constant, so the cosine of two clips is ALPHA + (1 - ALPHA) * r, r the cosine
    of their maps: an affine calibration that puts the dedup default of 0.90 at r = 0.70, halfway between
    what copies scored (r >= 0.81 for mirror images, crops of 5-15 % centred or 10 % at a corner,
    rescales, re-encodes and trims) and what clips of different shots scored (r <= 0.60) on real clips in
    bench/neardup_quality.py. Ranking and faiss search are unaffected; unrelated clips read about 0.6-0.8
    instead of about 0. Adjacent windows of one shot mostly score above 0.9, as they look alike.
    """

    VERSION = 2
    SIZE = 64
    ALPHA = 2 / 3
    WEIGHTS = {"luma": 1.0, "texture": 1.0, "colour": 0.5}
    # grid, blur sigma (fraction of the frame), centred windows (pixels of the 64 px frame; even, so symmetric)
    POOLING = {"luma": (8, 0.05, (64,)), "texture": (4, 0.04, (64, 54, 44)), "colour": (4, 0.08, (64,))}
    # Each map's channels as its mirror image orders them: texture bins are at 0, 45, 90 and 135 deg, and a
    # mirror turns an edge at theta into one at 180 - theta.
    MIRROR = {"luma": [0], "texture": [0, 3, 2, 1], "colour": [0, 1]}
    YCRCB = np.array([[0.299, 0.587, 0.114], [0.5, -0.4187, -0.0813], [-0.1687, -0.3313, 0.5]], np.float32)

    def __init__(self):
        self.name = f"thumb:v{self.VERSION}"
        self.dim = sum(len(self.MIRROR[k]) * g * ((g + 1) // 2) for k, (g, _, _) in self.POOLING.items()) + 1
        self._pool = {k: [_pool_matrix(self.SIZE, g, sigma * self.SIZE, w) for w in windows]
                      for k, (g, sigma, windows) in self.POOLING.items()}

    def _maps(self, frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        """(frames, features) per map: mirror-symmetric left halves, not yet normalised."""
        import cv2
        n = self.SIZE
        img = np.stack([cv2.resize(f, (n, n), interpolation=cv2.INTER_AREA) for f in frames]).astype(np.float32)
        ycc = (img.reshape(-1, 3) @ (self.YCRCB.T / 255)).reshape(img.shape)      # (F, n, n, 3): Y, Cr, Cb
        y = np.ascontiguousarray(ycc[..., 0])
        gx = np.stack([cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3) for f in y])         # mirrored borders
        gy = np.stack([cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3) for f in y])
        # Gradient energy in 4 orientation bins (0, 45, 90, 135 deg): the doubled angle 2 theta as
        # (cos, sin) * magnitude = (gx^2 - gy^2, 2 gx gy) / magnitude, each split into its positive and
        # negative half; compressed by a square root.
        gxx, gyy = gx * gx, gy * gy
        halves = np.stack([gxx - gyy, 2 * gx * gy], axis=1)
        halves = np.concatenate([np.maximum(halves, 0), np.maximum(-halves, 0)], axis=1)
        texture = np.sqrt(halves / np.sqrt(gxx + gyy + 1e-12)[:, None])
        channels = {"luma": ycc[..., :1].transpose(0, 3, 1, 2), "texture": texture,
                    "colour": ycc[..., 1:].transpose(0, 3, 1, 2)}
        out = {}
        for kind, x in channels.items():                                     # x: (F, C, n, n)
            pooled = sum(m @ x @ m.T for m in self._pool[kind])
            pooled = pooled - pooled.mean(axis=(2, 3), keepdims=True)
            mirrored = pooled[:, self.MIRROR[kind], :, ::-1]
            half = ((pooled + mirrored) / 2)[..., :(pooled.shape[-1] + 1) // 2]
            out[kind] = half.reshape(len(frames), -1)
        return out

    def embed_clip(self, frames: list[np.ndarray]) -> np.ndarray:
        """The clip's unit vector: each map averaged over the frames, then normalised and weighted."""
        maps = self._maps(frames)
        parts = [w * l2norm(maps[k].mean(axis=0)) for k, w in self.WEIGHTS.items()]
        content = np.concatenate(parts) / np.sqrt(sum(w * w for w in self.WEIGHTS.values()))
        return np.append(np.sqrt(1 - self.ALPHA) * content, np.sqrt(self.ALPHA)).astype(np.float32)

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        return np.stack([self.embed_clip([f]) for f in frames])


def _pool_matrix(n: int, grid: int, sigma: float, window: int) -> np.ndarray:
    """(grid, n): a Gaussian blur of a length-n signal (mirrored at the ends), then the centred `window`
    samples area-averaged into `grid` cells. Symmetric: reversing the signal reverses the result."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    blur = np.zeros((n, n))
    for i in range(n):
        for t, k in zip(taps, range(i - radius, i + radius + 1)):
            blur[i, -k - 1 if k < 0 else (2 * n - 1 - k if k >= n else k)] += t
    edges = np.linspace(0, window, grid + 1)
    area = np.zeros((grid, window))
    for g in range(grid):
        for j in range(window):
            area[g, j] = max(0.0, min(j + 1, edges[g + 1]) - max(j, edges[g]))
    area /= area.sum(axis=1, keepdims=True)
    o = (n - window) // 2
    return (area @ blur[o:o + window]).astype(np.float32)


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


THUMB_SPECS = "thumb (the current model-free embedder), thumb:v2, thumb:SIDE (the earlier grey thumbnail)"
SPECS = f"{THUMB_SPECS}, hf:MODEL_DIR or openclip:MODEL_DIR"


def _thumb(arg: str):
    """The model-free embedder a `thumb[:ARG]` spec names: LayoutEmbedder for `thumb` and `thumb:v2`, the
    earlier grey thumbnail for `thumb:SIDE` (its recorded name unchanged, so its stored embeddings stay valid)."""
    if arg in ("", f"v{LayoutEmbedder.VERSION}"):
        return LayoutEmbedder
    if arg.isdigit() and int(arg) > 0:
        return lambda: ThumbnailEmbedder(int(arg))
    raise ValueError(f"unknown model-free embedder thumb:{arg}: use {THUMB_SPECS}")


def embedder_name(spec: str) -> str:
    """The name a spec's embeddings are recorded under, without loading the model. A new version of the
    model-free embedder gets a new name, so a manifest never mixes its embeddings with older ones: the
    dedupe stage embeds again every clip that has no embedding under the current name."""
    kind, _, arg = spec.partition(":")
    if kind == "thumb":
        return f"thumb:v{LayoutEmbedder.VERSION}" if _thumb(arg) is LayoutEmbedder else f"thumb:{int(arg)}"
    if kind in ("hf", "openclip"):
        return f"{kind}:{Path(arg.rstrip('/')).name}"
    raise ValueError(f"unknown embedder {spec!r}: use {SPECS}")


def make_embedder(spec: str, device: str = "cpu") -> FrameEmbedder:
    """`thumb`, `thumb:v2`, `thumb:16`, `hf:/path/to/model_dir` or `openclip:/path/to/model_dir`."""
    kind, _, arg = spec.partition(":")
    if kind == "thumb":
        return _thumb(arg)()
    if kind in ("hf", "openclip"):
        if not arg:
            raise ValueError(f"{kind} embedder needs a model directory: {kind}:/path/to/clip")
        return (HFImageTextEmbedder if kind == "hf" else OpenClipEmbedder)(arg, device=device)
    raise ValueError(f"unknown embedder {spec!r}: use {SPECS}")


_CACHE: dict = {}


def cached_embedder(spec: str, device: str = "cpu") -> FrameEmbedder:
    """One model per process (stage workers call this for every item)."""
    if (spec, device) not in _CACHE:
        _CACHE[(spec, device)] = make_embedder(spec, device)
    return _CACHE[(spec, device)]


def clip_vector(embedder: FrameEmbedder, frames: list[np.ndarray]) -> np.ndarray:
    """One clip's unit vector from its frames: the embedder's own pooling where it has one (embed_clip),
    else the mean of its frames' unit embeddings, renormalised."""
    pool = getattr(embedder, "embed_clip", None)
    return pool(frames) if pool is not None else l2norm(embedder.embed_frames(frames).mean(axis=0))


def clip_embedding(embedder: FrameEmbedder, path: str, num_frames: int = 8) -> np.ndarray:
    """One clip -> one unit vector, from `num_frames` frames spread over it."""
    return clip_vector(embedder, sample_frames(path, num_frames))
