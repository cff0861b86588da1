"""score: per-clip filter scores -> the `scores` table (clip_text_sim, aesthetic, motion, text_overlay).

needs: cut clips; captions for clip_text_sim. produces: scores rows (clip_id, metric, value, model).
Frames are decoded once per clip and shared by the metrics. A rerun computes only the (clip, metric)
pairs not recorded yet for the configured model, so adding a metric later scores just that metric.
The rules that turn scores into a selection live in ivdata/curate/filters.py and internvid2.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivdata.corpus import Corpus
from ivdata.curate.embed import cached_embedder, embedder_name, l2norm, model_spec
from ivdata.curate.filters import AestheticHead, motion_score, text_overlay_score
from ivdata.curate.frames import frame_pairs, sample_frames
from ivdata.manifest import Manifest
from ivdata.runtime.executor import Resources
from ivdata.stages.base import Stage, StageConfigError, StageStats, failed

METRICS = ("motion", "aesthetic", "clip_text_sim", "text_overlay")
_HEADS: dict = {}


@dataclass
class ScoreConfig:
    metrics: tuple[str, ...] = ("motion",)
    model_dir: str | None = None             # CLIP / SigLIP directory (transformers) for sim + aesthetic
    aesthetic_head: str | None = None        # .safetensors / .pt Linear stack over image embeddings
    aesthetic_activation: str = "none"
    caption_kinds: tuple[str, ...] = ("AVS", "AV", "V", "S", "A")   # the first present is scored
    num_frames: int = 8
    motion_pairs: int = 4
    motion_gap_s: float = 0.25
    device: str = "cpu"

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        self.caption_kinds = tuple(self.caption_kinds)
        bad = set(self.metrics) - set(METRICS)
        if bad:
            raise ValueError(f"unknown metrics {sorted(bad)}; known: {METRICS}")
        if {"aesthetic", "clip_text_sim"} & set(self.metrics) and not self.model_dir:
            raise ValueError("aesthetic and clip_text_sim need model_dir (a CLIP/SigLIP directory)")
        if "aesthetic" in self.metrics and not self.aesthetic_head:
            raise ValueError("aesthetic needs aesthetic_head (a weights file)")

    def model_of(self, metric: str) -> str:
        """What scores.model records, so scores from different models never mix."""
        if metric == "motion":
            return f"farneback:gap{self.motion_gap_s:g}"
        if metric == "text_overlay":
            return "static-edges"
        name = embedder_name(model_spec(self.model_dir))
        if metric == "aesthetic":
            return f"{name}+{Path(self.aesthetic_head).stem}"
        return name


def _head(cfg: ScoreConfig) -> AestheticHead:
    """The aesthetic head, loaded once per process."""
    key = (cfg.aesthetic_head, cfg.aesthetic_activation)
    if key not in _HEADS:
        _HEADS[key] = AestheticHead(cfg.aesthetic_head, cfg.aesthetic_activation)
    return _HEADS[key]


class ScoreStage(Stage):
    name = "score"
    needs = ("clips.path", "captions")
    produces = ("scores",)

    def __init__(self, corpus: Corpus, cfg: ScoreConfig | None = None):
        super().__init__(corpus)
        self.cfg = cfg or ScoreConfig()

    def check(self, m: Manifest, retry_failed: bool) -> None:
        """The model and the aesthetic head load, and the head takes the model's embeddings: otherwise
        every clip would fail the same way."""
        cfg = self.cfg
        if not {"aesthetic", "clip_text_sim"} & set(cfg.metrics):
            return
        import torch
        device = cfg.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"      # the GPUs are the workers' (Ray nodes): loading and sizes are checked on CPU here
        try:
            model = cached_embedder(model_spec(cfg.model_dir), device)
        except Exception as e:
            raise StageConfigError(f"score model {cfg.model_dir}: {type(e).__name__}: {e}") from e
        if "aesthetic" in cfg.metrics:
            try:
                head = _head(cfg)
            except Exception as e:
                raise StageConfigError(f"aesthetic head {cfg.aesthetic_head}: {type(e).__name__}: {e}") from e
            if head.in_dim != model.dim:
                raise StageConfigError(f"aesthetic head {cfg.aesthetic_head} takes {head.in_dim}-d embeddings, "
                                       f"but {cfg.model_dir} gives {model.dim}-d ones")

    def resources(self) -> Resources:
        """One GPU per worker when the embedding model runs on one (so Ray places workers on GPU nodes)."""
        uses_model = bool({"aesthetic", "clip_text_sim"} & set(self.cfg.metrics))
        return Resources(gpus=1 if uses_model and str(self.cfg.device).startswith("cuda") else 0)

    def setup(self) -> None:
        """The embedding model and the aesthetic head, once per worker (the process cache shares them with
        `check` when the work runs inline)."""
        cfg = self.cfg
        uses_model = bool({"aesthetic", "clip_text_sim"} & set(cfg.metrics))
        self._model = cached_embedder(model_spec(cfg.model_dir), cfg.device) if uses_model else None
        self._head = _head(cfg) if "aesthetic" in cfg.metrics else None

    def pending(self, m: Manifest, retry_failed: bool) -> list[dict]:
        cfg = self.cfg
        have = {(c, mt) for c, mt in m.execute(
            "SELECT clip_id, metric FROM scores WHERE " + " OR ".join(
                "(metric = ? AND model = ?)" for _ in cfg.metrics),
            [x for mt in cfg.metrics for x in (mt, cfg.model_of(mt))]).fetchall()}
        captions = {}
        if "clip_text_sim" in cfg.metrics:
            rank = {k: i for i, k in enumerate(cfg.caption_kinds)}
            for cid, kind, text in m.execute(
                    "SELECT clip_id, kind, text FROM captions WHERE text IS NOT NULL AND trim(text) <> '' "
                    f"AND kind IN ({', '.join('?' * len(cfg.caption_kinds))}) ORDER BY clip_id, created_at",
                    list(cfg.caption_kinds)).fetchall():
                if cid not in captions or rank[kind] < rank[captions[cid][0]]:
                    captions[cid] = (kind, text)
        items = []
        for cid, path in m.execute("SELECT clip_id, path FROM clips WHERE status = 'ok' ORDER BY clip_id").fetchall():
            todo = [mt for mt in cfg.metrics if (cid, mt) not in have
                    and (mt != "clip_text_sim" or cid in captions)]
            if todo:
                items.append({"clip_id": cid, "path": path, "metrics": todo,
                              "caption": captions.get(cid, (None, None))[1]})
        return items

    def work(self, item: dict) -> dict:
        cfg, out = self.cfg, {}
        if "motion" in item["metrics"]:
            out["motion"] = motion_score(frame_pairs(item["path"], cfg.motion_pairs, cfg.motion_gap_s),
                                         cfg.motion_gap_s)
        if "text_overlay" in item["metrics"]:
            out["text_overlay"] = text_overlay_score(sample_frames(item["path"], cfg.num_frames, max_side=256))
        if {"aesthetic", "clip_text_sim"} & set(item["metrics"]):
            model = self._model
            frames_emb = model.embed_frames(sample_frames(item["path"], cfg.num_frames, max_side=None))
            if "aesthetic" in item["metrics"]:
                out["aesthetic"] = float(np.mean(self._head(frames_emb)))
            if "clip_text_sim" in item["metrics"]:
                video = l2norm(frames_emb.mean(axis=0))
                out["clip_text_sim"] = float(video @ model.embed_texts([item["caption"]])[0])
        return out

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        rows = []
        for item, res in done:
            if failed(res):
                stats.failed += 1
                errors = stats.extra.setdefault("errors", [])
                if len(errors) < 20:   # examples; the count is stats.failed
                    errors.append(f"{item['clip_id']}: {res.reason}")
                continue
            stats.ok += 1
            rows += [{"clip_id": item["clip_id"], "metric": mt, "value": v, "model": self.cfg.model_of(mt)}
                     for mt, v in res.items()]
        m.insert_rows("scores", rows)
