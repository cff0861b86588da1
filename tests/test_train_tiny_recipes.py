"""`iv models tiny DIR` writes every tiny model the tiny recipes read, and each tiny recipe then trains on its default
data (the demo corpus's shard sets, as `make demo` lays them out) with nothing set but `assets=DIR`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ivtrain.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = sorted(p for p in (ROOT / "recipes").glob("*_tiny.yaml") if "objective:" in p.read_text())


@pytest.fixture(scope="module")
def home(tmp_path_factory, real_videos):
    """A working directory holding what the tiny recipes' default data paths name: the demo corpus's shards."""
    from ivdata.pipeline import build_corpus, shard
    from ivdata.stages.shard import ShardConfig

    sys.path.insert(0, str(ROOT / "bench"))
    from mixture_sets import add_captions

    home = tmp_path_factory.mktemp("home")
    corpus = build_corpus("demo", [real_videos], home=home, cut="reencode", short_side=64, shard_maxcount=4)
    add_captions(corpus, "V", 0)   # as the demo's annotation gives every clip (stage 2 reads them)
    shard(corpus, ShardConfig(subset="all", shardset="deduped", maxcount=4))
    instruction_set(corpus, home)
    return home


def instruction_set(corpus, home: Path) -> None:
    """The demo's instruction set: a VideoChat2-IT question about each clip, imported and sharded as `instructions`
    (what the stage-3 tiny recipes read)."""
    from ivdata.manifest import Manifest
    from ivdata.pipeline import shard
    from ivdata.stages.instructions import import_instructions
    from ivdata.stages.shard import ShardConfig

    with Manifest(corpus.manifest_path, read_only=True) as m:
        clips = m.rows("SELECT path, duration_s FROM clips WHERE status = 'ok' ORDER BY clip_id")
    entries = [{"video": c["path"], "QA": [{"i": "Answer questions about the video clip.", "q": "How long is it?",
                                            "a": f"About {c['duration_s']:.1f} seconds."}]} for c in clips]
    path = home / "instructions.json"
    path.write_text(json.dumps(entries))
    import_instructions(corpus, path, "videochat2", home, dataset="demo_clip_qa")
    shard(corpus, ShardConfig(subset="all", shardset="instructions", unit="conversations", maxcount=4))


def iv(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "IVKIT_HOME": str(cwd)}
    return subprocess.run([sys.executable, "-c", "from cli import app; app()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def assets(home):
    proc = iv("models", "tiny", "tiny_models", cwd=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return home / "tiny_models"


def test_models_tiny_writes_training_and_annotation_models(assets):
    for name in ("tiny_clip", "tiny_videomae", "tiny_siglip", "tiny_modernbert", "tiny_bert", "annotate/captioner",
                 "annotate/tagger", "annotate/llm"):
        assert (assets / name / "config.json").is_file(), name
    assert (assets / "tiny_bert" / "tokenizer.json").is_file() and (assets / "tiny_beats" / "beats.pt").is_file()


@pytest.mark.parametrize("recipe", TINY, ids=lambda p: p.stem)
def test_every_tiny_recipe_trains_with_only_assets_set(home, assets, recipe):
    loaded = load_recipe(recipe, [f"assets={assets}"])
    section = loaded.section
    init = getattr(getattr(section, "vision", None), "init", "") or getattr(section, "init", "")
    if init and not (home / init / "export.json").exists():   # a later stage starts from the earlier one's run
        earlier = next(p for p in TINY if load_recipe(p, [f"assets={assets}"]).train.out_dir == init)
        stage1 = iv("train", str(earlier), "--set", f"assets={assets}", cwd=home)
        assert stage1.returncode == 0, stage1.stderr[-3000:]
    proc = iv("train", str(recipe), "--set", f"assets={assets}", cwd=home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = home / loaded.train.out_dir
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert rows and rows[-1]["step"] == loaded.train.steps
    assert (run / "export.json").is_file()
