"""Clip scores for filtering (recorded in `scores`) and the rules that turn them into a selection.

  clip_text_sim  cosine between the clip's image embedding (mean of frames) and its caption's text
                 embedding, from one CLIP/SigLIP model. InternVid keeps the clips that score highest.
  aesthetic      a linear head over L2-normalised image embeddings (the LAION aesthetic predictor's
                 layout: Linear layers applied in order, no activations unless asked), averaged over
                 frames; weights from a .safetensors / .pt file.
  text_overlay   fraction of the frame covered by static text-shaped edges (burned-in subtitles, logos).
  motion         mean Farneback optical-flow magnitude between frames 0.25 s apart, as a fraction of
                 the frame diagonal per second, median over pairs spread over the clip. Near 0 = a still
                 image; very high = shaking, flashing or cuts. Both ends are dropped by the rules.
Rules (duration, resolution, score bounds) are SQL over the manifest, so a selection is a query that
anyone can re-run and read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivdata.curate.embed import l2norm


# ---------------------------------------------------------------------------------------- motion
def motion_score(pairs: list[tuple[np.ndarray, np.ndarray]], gap_s: float) -> float:
    import cv2
    vals = []
    for a, b in pairs:
        ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
        gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
        flow = cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mag = np.sqrt((flow ** 2).sum(-1)).mean()
        vals.append(mag / np.hypot(*ga.shape) / gap_s)
    return float(np.median(vals))


# ---------------------------------------------------------------------------------- text overlay
def text_overlay_score(frames: list[np.ndarray]) -> float:
    """Fraction of the frame covered by static, text-shaped edge regions (burned-in captions, logos, tickers).

    Model-free: overlays stay put while the footage moves, so edges present in *every* sampled frame are
    kept, joined along text lines, and counted where the blob is text-shaped (wide, short). A still clip is
    all static: score it together with `motion`, whose lower bound drops still clips anyway.
    """
    import cv2
    if len(frames) < 2:
        raise ValueError("text_overlay_score needs at least 2 frames")
    static = None
    for f in frames:
        edges = cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), 100, 200) > 0
        static = edges if static is None else (static & edges)
    h, w = static.shape
    lines = cv2.morphologyEx(static.astype(np.uint8) * 255, cv2.MORPH_CLOSE,
                             cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, w // 40), 3)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    area = 0
    for x, y, bw, bh, _ in stats[1:n]:
        if 0.015 * h <= bh <= 0.25 * h and bw >= 2 * bh:
            area += bw * bh
    return float(area / (h * w))


# ------------------------------------------------------------------------------------- aesthetic
class AestheticHead:
    """A stack of Linear layers read from a state dict, applied in the order of their indices.

    The released LAION predictor (`layers.0`, `.2`, `.4`, `.6`, `.7`; 768 -> 1024 -> 128 -> 64 -> 16 -> 1,
    dropouts in between) has no activations: `activation="none"` reproduces it.
    """

    def __init__(self, path: str | Path, activation: str = "none"):
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file
            sd = load_file(str(path))
        else:
            import torch
            sd = {k: v.float().numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
        weights = sorted((k for k in sd if k.endswith(".weight") and sd[k].ndim == 2),
                         key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])
        if not weights:
            raise ValueError(f"{path}: no Linear weights (2-d '*.weight' tensors) in the file")
        self.layers = []
        for k in weights:
            w = np.asarray(sd[k], dtype=np.float32)
            b = np.asarray(sd.get(k[:-len("weight")] + "bias", np.zeros(w.shape[0])), dtype=np.float32)
            if self.layers and self.layers[-1][0].shape[0] != w.shape[1]:
                raise ValueError(f"{path}: {k} takes {w.shape[1]} inputs but the previous layer gives "
                                 f"{self.layers[-1][0].shape[0]}")
            self.layers.append((w, b))
        if self.layers[-1][0].shape[0] != 1:
            raise ValueError(f"{path}: the last layer must output one score, not {self.layers[-1][0].shape[0]}")
        if activation not in ("none", "relu", "gelu"):
            raise ValueError("activation: none | relu | gelu")
        self.activation = activation
        self.in_dim = self.layers[0][0].shape[1]
        self.name = f"aesthetic:{path.stem}"

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        x = l2norm(emb)
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"aesthetic head expects {self.in_dim}-d embeddings, got {x.shape[-1]}-d")
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1 and self.activation == "relu":
                x = np.maximum(x, 0)
            elif i < len(self.layers) - 1 and self.activation == "gelu":
                x = 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))
        return x[..., 0]


# ------------------------------------------------------------------------------------------ rules
@dataclass
class FilterRules:
    min_duration_s: float | None = 2.0
    max_duration_s: float | None = 60.0
    min_short_side: int | None = None
    min_motion: float | None = None
    max_motion: float | None = None
    min_aesthetic: float | None = None
    min_clip_text_sim: float | None = None
    max_text_overlay: float | None = None
    require_scores: bool = True        # a clip without a score a bound needs is dropped, not waved through

    def where(self) -> str:
        """A WHERE clause over clip_info (columns duration_s, width, height; scores by subquery)."""
        parts = ["status = 'ok'"]
        if self.min_duration_s is not None:
            parts.append(f"duration_s >= {float(self.min_duration_s)}")
        if self.max_duration_s is not None:
            parts.append(f"duration_s <= {float(self.max_duration_s)}")
        if self.min_short_side is not None:
            parts.append(f"least(width, height) >= {int(self.min_short_side)}")
        for metric, lo, hi in (("motion", self.min_motion, self.max_motion),
                               ("aesthetic", self.min_aesthetic, None),
                               ("clip_text_sim", self.min_clip_text_sim, None),
                               ("text_overlay", None, self.max_text_overlay)):
            if lo is None and hi is None:
                continue
            v = f"(SELECT max(value) FROM scores s WHERE s.clip_id = clip_info.clip_id AND s.metric = '{metric}')"
            cond = " AND ".join(c for c in (lo is not None and f"{v} >= {float(lo)}",
                                            hi is not None and f"{v} <= {float(hi)}") if c)
            parts.append(f"({cond})" if self.require_scores else f"({v} IS NULL OR ({cond}))")
        return " AND ".join(parts)
