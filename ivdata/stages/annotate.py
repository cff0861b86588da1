"""annotate: VidCap captions per clip -> the `captions` table (S, A, V, then AV and AVS).

needs: cut clips (clips.path, audio_path, duration_s, has_audio). produces: captions rows
(clip_id, kind, text, lang, model, prompt_hash, extra, created_at).

Four stages, run in this order by `run_annotation` (each can also run alone):
  asr     S   speech (+ language id, translation to English)         ivdata/annotate/asr.py
  audio   A   audio caption or AudioSet tags                          ivdata/annotate/audio_caption.py
  frames  V   ~1 fps frame captions + middle frame, merged            ivdata/annotate/frame_caption.py
  fuse    AV, AVS   LLM fusion of V, A, S (clips with audio only)     ivdata/annotate/fuse.py
A clip is done for a stage when it has a row of the stage's kind with the configured model and
prompt hash; a rerun skips it, and a new model or prompt captions it again beside the old rows.
Every outcome is a row: a clip without audio or with silence gets an empty S and A whose `extra`
says why, and a clip whose decoding fails gets an empty row with status 'failed' and the reason
(redone only with retry_failed), so nothing is retried forever and nothing is silently missing.
Work items are batches of clips (models run batched); each batch is committed on its own, so a
killed run loses at most the batches in flight. Each stage loads its models once per worker (`setup`); a
stage whose models run on a GPU (`--device cuda`) asks the executor for one GPU per worker, so on a Ray
cluster its workers go to GPU nodes.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from ivdata.annotate.config import STAGES, VidCapConfig
from ivdata.annotate.prompts import TRANSLATE, V_MERGE, prompt_hash
from ivdata.corpus import Corpus
from ivdata.manifest import Manifest
from ivdata.manifest.db import utcnow
from ivdata.runtime.executor import Executor, Resources
from ivdata.stages.base import Stage, StageStats, failed, model_memory_mb, run_stage

ANNOTATE_VERSION = "1"


# -- the identity a caption records (config only: computing it loads no model) ---------------------
def asr_identity(cfg: VidCapConfig) -> tuple[str, str]:
    a, t = cfg.asr, cfg.asr.translate
    translator = {"none": None, "seq2seq": f"seq2seq:{Path(t.model).name}" if t.model else None,
                  "llm": cfg.fuse.model_name}[t.backend]
    return a.model_name, prompt_hash("S", {
        "beam_size": a.beam_size, "vad": a.vad, "language": a.language, "max_new_tokens": a.max_new_tokens,
        "silence_dbfs": a.silence_dbfs, "translate": [t.backend, translator, t.src_lang_codes,
                                                      TRANSLATE if t.backend == "llm" else None]})


def audio_identity(cfg: VidCapConfig) -> tuple[str, str]:
    a = cfg.audio
    settings = ({"top_k": a.top_k, "threshold": a.threshold, "template": "The audio contains"}
                if a.backend == "tagging" else {"max_new_tokens": a.max_new_tokens})
    return a.model_name, prompt_hash("A", {**settings, "silence_dbfs": a.silence_dbfs})


def frames_identity(cfg: VidCapConfig) -> tuple[str, str]:
    f = cfg.frames
    merge = [V_MERGE, cfg.fuse.model_name, cfg.fuse.max_new_tokens, cfg.fuse.temperature] if f.merge == "llm" else "consensus"
    return f.model_name, prompt_hash("V", {"fps": f.fps, "max_frames": f.max_frames,
                                           "max_new_tokens": f.max_new_tokens, "merge": merge})


def fuse_identities(cfg: VidCapConfig) -> dict[str, tuple[str, str]]:
    """AV and AVS depend on their inputs too: another V, A or S model makes them stale."""
    from ivdata.annotate.fuse import fusion_hashes
    inputs = {"V": frames_identity(cfg), "A": audio_identity(cfg), "S": asr_identity(cfg)}
    return {kind: (cfg.fuse.model_name, prompt_hash(kind, h, inputs)) for kind, h in fusion_hashes(cfg.fuse).items()}


# -- the shared stage machinery --------------------------------------------------------------------
class CaptionStage(Stage):
    """pending = subset clips without a row of `kinds[0]` for this identity; work = one batch of clips."""
    kinds: ClassVar[tuple[str, ...]]
    needs = ("clips.path", "clips.audio_path", "clips.duration_s", "clips.has_audio", "subsets")
    produces = ("captions",)

    def __init__(self, corpus: Corpus, cfg: VidCapConfig, subset: str = "all"):
        super().__init__(corpus)
        self.cfg, self.subset = cfg, subset

    def identities(self) -> dict[str, tuple[str, str]]:
        raise NotImplementedError

    def config(self) -> dict:
        return {"subset": self.subset, "vidcap": asdict(self.cfg),
                "identities": {k: list(v) for k, v in self.identities().items()}}

    def candidates(self, m: Manifest) -> list[dict]:
        ids = m.subset_clip_ids(self.subset)
        return m.rows("SELECT clip_id, path, audio_path, duration_s, has_audio FROM clips "
                      "WHERE clip_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY clip_id", [ids])

    def pending(self, m: Manifest, retry_failed: bool) -> list[list[dict]]:
        model, phash = self.identities()[self.kinds[0]]
        not_failed = "AND coalesce(json_extract_string(extra, '$.status'), '') <> 'failed'" if retry_failed else ""
        done = {r[0] for r in m.execute(
            f"SELECT clip_id FROM captions WHERE kind = ? AND model = ? AND prompt_hash = ? {not_failed}",
            [self.kinds[0], model, phash]).fetchall()}
        todo = [r for r in self.candidates(m) if r["clip_id"] not in done]
        n = max(1, self.cfg.batch_size)
        return [todo[i: i + n] for i in range(0, len(todo), n)]

    def device(self) -> str:
        return self.cfg.resolved_device()

    def model_paths(self) -> list[str]:
        """The local model files and folders this stage loads (for its workers' memory)."""
        raise NotImplementedError

    def resources(self) -> Resources:
        return Resources(gpus=1 if self.device().startswith("cuda") else 0,
                         memory_mb=model_memory_mb(self.model_paths()))

    def setup(self) -> None:
        self._models = self.load_models()

    def load_models(self) -> dict[str, Any]:
        raise NotImplementedError

    def fusion_paths(self) -> list[str]:
        f = self.cfg.fuse
        return [f.model] if f.backend != "openai" and f.model else []

    def record(self, m: Manifest, done: list, stats: StageStats) -> None:
        rows, now = [], utcnow()
        for batch, results in done:
            if failed(results):      # the whole batch's work raised (e.g. the model call): every clip says so
                results = [{"clip_id": c["clip_id"], "captions": {k: ("", None, {"status": "failed",
                            "error": results.reason}) for k in self.kinds}} for c in batch]
            for clip, res in zip(batch, results):
                statuses = {extra.get("status") for _, _, extra in res["captions"].values()}
                if "failed" in statuses:
                    stats.failed += 1
                else:
                    stats.ok += 1
                if statuses & {"ok", "empty", "no_speech"}:   # media a model really processed
                    stats.media_seconds += clip["duration_s"] or 0.0
                for s in statuses - {"ok", "failed"}:
                    stats.extra[s] = stats.extra.get(s, 0) + 1
                for kind, (text, lang, extra) in res["captions"].items():
                    model, phash = self.identities()[kind]
                    rows.append({"clip_id": clip["clip_id"], "kind": kind, "text": text, "lang": lang,
                                 "model": model, "prompt_hash": phash, "created_at": now,
                                 "extra": json.dumps({"version": ANNOTATE_VERSION, **extra}, default=str)})
        m.insert_rows("captions", rows)           # INSERT OR REPLACE: a retried failure replaces its row

    def work(self, batch: list[dict]) -> list[dict]:
        """Per clip: {"clip_id", "captions": {kind: (text, lang, extra)}}. A clip whose media fails is a
        'failed' outcome of that clip only; the rest of the batch goes on."""
        prepared, results = [], []
        for clip in batch:
            try:
                prepared.append((clip, self.prepare(clip)))
            except Exception as e:  # a decode error belongs to this clip: record it, go on
                results.append({"clip_id": clip["clip_id"], "captions": {
                    k: ("", None, {"status": "failed", "error": f"{type(e).__name__}: {e}"}) for k in self.kinds}})
        t0 = time.perf_counter()
        outs = self.compute([p for _, p in prepared]) if prepared else []
        per_clip_s = (time.perf_counter() - t0) / max(len(prepared), 1)
        for (clip, _), caps in zip(prepared, outs):
            for _, _, extra in caps.values():
                extra.setdefault("compute_s", round(per_clip_s, 4))
            results.append({"clip_id": clip["clip_id"], "captions": caps})
        order = {c["clip_id"]: i for i, c in enumerate(batch)}
        return sorted(results, key=lambda r: order[r["clip_id"]])

    def prepare(self, clip: dict) -> Any:
        """Decode one clip's media (raises for this clip only)."""
        raise NotImplementedError

    def compute(self, prepared: list) -> list[dict[str, tuple[str, str | None, dict]]]:
        """Run the model(s) over the whole batch."""
        raise NotImplementedError

    def load_generator(self):
        from ivdata.annotate.fuse import load_generator
        return load_generator(self.cfg.fuse, self.device())


def _load_clip_audio(clip: dict):
    from ivdata.annotate.audio import load_audio
    src = clip["audio_path"] if clip["audio_path"] and Path(clip["audio_path"]).exists() else clip["path"]
    return load_audio(src, expect_duration_s=clip["duration_s"], min_coverage=0.75)


class AsrStage(CaptionStage):
    name = "annotate_asr"
    kinds = ("S",)

    def identities(self):
        return {"S": asr_identity(self.cfg)}

    def prepare(self, clip):
        return _load_clip_audio(clip)

    def model_paths(self):
        t = self.cfg.asr.translate
        return ([self.cfg.asr.model] + ([t.model] if t.backend == "seq2seq" and t.model else [])
                + (self.fusion_paths() if t.backend == "llm" else []))

    def load_models(self):
        from ivdata.annotate.asr import load_asr
        from ivdata.annotate.translate import load_translator
        a = self.cfg.asr
        translator = None
        if a.translate.backend != "none":
            translator = load_translator(a.translate, self.device(),
                                         self.load_generator() if a.translate.backend == "llm" else None)
        return {"asr": load_asr(a, self.device()), "translator": translator}

    def compute(self, audios):
        from ivdata.annotate.asr import transcribe_clip
        a, asr, translator = self.cfg.asr, self._models["asr"], self._models["translator"]
        out = []
        for audio in audios:
            t = transcribe_clip(asr, audio, a.silence_dbfs, translator)
            out.append({"S": (t.text, t.lang, t.extra())})
        return out


class AudioCaptionStage(CaptionStage):
    name = "annotate_audio"
    kinds = ("A",)

    def identities(self):
        return {"A": audio_identity(self.cfg)}

    def prepare(self, clip):
        return _load_clip_audio(clip)

    def model_paths(self):
        return [self.cfg.audio.model]

    def load_models(self):
        from ivdata.annotate.audio_caption import load_audio_captioner
        return {"captioner": load_audio_captioner(self.cfg.audio, self.device())}

    def compute(self, audios):
        from ivdata.annotate.audio_caption import caption_clips
        a, cap = self.cfg.audio, self._models["captioner"]
        extra = {"backend": a.backend}
        return [{"A": (text, "en" if text else None, {"status": status, **extra})}
                for status, text in caption_clips(cap, audios, a.silence_dbfs)]


class FrameCaptionStage(CaptionStage):
    name = "annotate_frames"
    kinds = ("V",)

    def identities(self):
        return {"V": frames_identity(self.cfg)}

    def prepare(self, clip):
        from ivdata.annotate.frame_caption import sample_frames
        f = self.cfg.frames
        return sample_frames(clip["path"], f.fps, f.max_frames, expect_duration_s=clip["duration_s"])

    def model_paths(self):
        return [self.cfg.frames.model] + (self.fusion_paths() if self.cfg.frames.merge == "llm" else [])

    def load_models(self):
        from ivdata.annotate.frame_caption import ImageCaptioner
        f = self.cfg.frames
        return {"captioner": ImageCaptioner(f.model, self.device(), f.max_new_tokens),
                "merger": self.load_generator() if f.merge == "llm" else None}

    def compute(self, frames):
        from ivdata.annotate.frame_caption import caption_clips
        f = self.cfg.frames
        merged = caption_clips(self._models["captioner"], frames, self._models["merger"])
        return [{"V": (r["V"], "en", {"status": "ok" if r["V"] else "empty", "merge": f.merge,
                                      "frame_captions": r["frame_captions"], "middle_caption": r["middle_caption"],
                                      "times": r["times"]})} for r in merged]


class FuseStage(CaptionStage):
    name = "annotate_fuse"
    kinds = ("AV", "AVS")

    def identities(self):
        return fuse_identities(self.cfg)

    def candidates(self, m: Manifest) -> list[dict]:
        """Clips with audio whose V, A and S (for the configured models) are recorded, V is not empty and
        none failed (a clip whose audio cannot be decoded gets no AV/AVS from its picture alone)."""
        ids = m.subset_clip_ids(self.subset)
        (vm, vh), (am, ah), (sm, sh) = frames_identity(self.cfg), audio_identity(self.cfg), asr_identity(self.cfg)
        return m.rows(
            "SELECT c.clip_id, c.path, c.audio_path, c.duration_s, c.has_audio, v.text AS V, a.text AS A, s.text AS S "
            "FROM clips c "
            "JOIN captions v ON v.clip_id = c.clip_id AND v.kind = 'V' AND v.model = ? AND v.prompt_hash = ? "
            "JOIN captions a ON a.clip_id = c.clip_id AND a.kind = 'A' AND a.model = ? AND a.prompt_hash = ? "
            "JOIN captions s ON s.clip_id = c.clip_id AND s.kind = 'S' AND s.model = ? AND s.prompt_hash = ? "
            "WHERE c.clip_id IN (SELECT unnest(?::VARCHAR[])) AND c.has_audio "
            "AND coalesce(v.text, '') <> '' AND NOT list_contains(["
            "json_extract_string(a.extra, '$.status'), json_extract_string(s.extra, '$.status')], 'failed') "
            "ORDER BY c.clip_id", [vm, vh, am, ah, sm, sh, ids])

    def pending(self, m: Manifest, retry_failed: bool) -> list[list[dict]]:
        # clips with audio that cannot be fused yet (an input kind was never run with the configured
        # model) are reported, not silently skipped
        ids = m.subset_clip_ids(self.subset)
        with_audio = m.scalar("SELECT count(*) FROM clips WHERE has_audio AND clip_id IN (SELECT unnest(?::VARCHAR[]))",
                              [ids])
        missing = {}
        for kind, (model, phash) in {"V": frames_identity(self.cfg), "A": audio_identity(self.cfg),
                                     "S": asr_identity(self.cfg)}.items():
            have = m.scalar("SELECT count(*) FROM captions k JOIN clips c USING (clip_id) WHERE c.has_audio AND "
                            "k.kind = ? AND k.model = ? AND k.prompt_hash = ? AND k.clip_id IN "
                            "(SELECT unnest(?::VARCHAR[]))", [kind, model, phash, ids])
            if have < with_audio:
                missing[kind] = with_audio - have
        self._missing_inputs = missing
        return super().pending(m, retry_failed)

    def finish(self, m: Manifest, stats: StageStats) -> None:
        if self._missing_inputs:
            stats.extra["clips_missing_input"] = self._missing_inputs

    def prepare(self, clip):
        return {k: clip[k] or "" for k in ("V", "A", "S")}

    def model_paths(self):
        return self.fusion_paths()

    def load_models(self):
        return {"generator": self.load_generator()}

    def compute(self, inputs):
        from ivdata.annotate.fuse import fuse
        answers = fuse(self._models["generator"], inputs)
        out = []
        for x, ans in zip(inputs, answers):
            used = [k for k in ("V", "A", "S") if x[k]]
            out.append({kind: (ans[kind], "en", {"status": "ok" if ans[kind] else "empty",
                                                 "inputs": used if kind == "AVS" else [k for k in used if k != "S"]})
                        for kind in ("AV", "AVS")})
        return out


STAGE_CLASSES = {"asr": AsrStage, "audio": AudioCaptionStage, "frames": FrameCaptionStage, "fuse": FuseStage}


def parse_stages(stages: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    names = [s.strip() for s in (stages.split(",") if isinstance(stages, str) else stages) if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise ValueError(f"--stages {','.join(names)}: choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)       # always in dependency order


def run_annotation(corpus: Corpus, cfg: VidCapConfig, stages=STAGES, subset: str = "all",
                   workers: int | Executor = 0, retry_failed: bool = False) -> dict[str, StageStats]:
    """Run the chosen VidCap stages in order; each records its own row in the runs table
    (clips/s as items_per_s, media seconds per second as media_s_per_s)."""
    stages = parse_stages(stages)
    cfg.check_models(stages)
    with corpus.manifest(read_only=True) as m:
        m.subset_clip_ids(subset)                      # a missing subset fails here, before any model loads
    return {s: run_stage(STAGE_CLASSES[s](corpus, cfg, subset), workers, retry_failed, batch_size=1)
            for s in stages}
