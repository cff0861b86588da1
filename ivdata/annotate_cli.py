"""`iv data annotate`: VidCap captions from the command line (cli.py mounts this function on the data sub-app);
the stages themselves are ivdata/stages/annotate.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from ivdata.annotate.config import load_config
from ivdata.cliutil import ExecutorOpt, RayAddressOpt, console, fail, run_on
from ivdata.corpus import Corpus
from ivdata.stages.annotate import parse_stages, run_annotation


def annotate(
    corpus: str = typer.Option("default", "--corpus", "-c", envvar="IVKIT_CORPUS",
                               help="Corpus name (manifests/NAME.duckdb under $IVKIT_HOME) or a .duckdb path."),
    subset: str = typer.Option("all", help="Subset name ('all': every good clip)."),
    stages: str = typer.Option("asr,audio,frames,fuse", help="Comma-separated: asr, audio, frames, fuse."),
    config: Optional[Path] = typer.Option(None, help="VidCap recipe (recipes/vidcap*.yaml)."),
    asr_model: Optional[str] = typer.Option(None, help="ASR model: CTranslate2 dir, or a .pt with --set asr.backend=openai-whisper."),
    audio_model: Optional[str] = typer.Option(None, help="Audio caption / tagging model dir."),
    frames_model: Optional[str] = typer.Option(None, help="Image-to-text model dir."),
    fuse_model: Optional[str] = typer.Option(None, help="LLM: causal LM dir, .gguf, or the served model name."),
    fuse_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (sets fuse.backend=openai)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    batch_size: Optional[int] = typer.Option(None, help="Clips per work item."),
    set_: List[str] = typer.Option([], "--set", help="Dotted override, e.g. --set asr.beam_size=1 (repeatable)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Parallel workers (0: inline); each loads its own models "
                                "on --device. With --executor ray: Ray actors (0: as many as the cluster holds)."),
    executor: str = ExecutorOpt, ray_address: Optional[str] = RayAddressOpt,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also redo clips whose failure is recorded."),
):
    """VidCap captions: S (ASR), A (audio), V (frames), AV and AVS (LLM fusion) -> the captions table."""
    from ivdata.manifest import ManifestError
    from ivkit.typed_yaml import ConfigError, parse_override
    overrides: dict[str, Any] = {"asr.model": asr_model, "audio.model": audio_model, "frames.model": frames_model,
                                 "fuse.model": fuse_model, "device": device, "batch_size": batch_size}
    if fuse_url:
        overrides.update({"fuse.backend": "openai", "fuse.url": fuse_url})
    try:
        overrides.update(parse_override(item) for item in set_)
        cfg = load_config(config, overrides)
        stats = run_annotation(Corpus.open(corpus), cfg, parse_stages(stages), subset,
                               run_on(executor, workers, ray_address), retry_failed)
    except (ConfigError, ManifestError, ValueError) as e:
        fail(str(e))
    for name, st in stats.items():
        c = st.as_counts()
        rtf = f", real-time factor {1 / c['media_s_per_s']:.3f}" if c.get("media_s_per_s") else ""
        outcomes = {k: v for k, v in st.extra.items()}
        console.print(f"[bold]{name}[/]: {st.ok} ok, {st.failed} failed in {st.seconds:.1f} s, "
                      f"{c['items_per_s']} clips/s{rtf}" + (f" {outcomes}" if outcomes else ""))
    return stats
