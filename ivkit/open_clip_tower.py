"""open_clip models from a local directory: the import that survives a CPU torch, loading, a tiny model.

A local open_clip directory is what open_clip's `local-dir:` schema reads: `open_clip_config.json`
(`{"model_cfg": ..., "preprocess_cfg": ...}`, the layout of open_clip's hub exports) beside one
weights file (`open_clip_model.safetensors`, `open_clip_pytorch_model.bin`, ...).

Why the import is wrapped: open_clip imports torchvision, and PyPI's torchvision wheels are CUDA
builds. Beside a CPU torch their C++ library does not load, and `import torchvision` then fails
while registering fake kernels for operators that were never defined ("operator torchvision::nms
does not exist"). open_clip needs only torchvision's Python transforms, so when (and only when)
that library does not load, the two operator schemas torchvision's Python side refers to at import
are declared first. Where the library loads (a matching CUDA install) nothing is declared.

The trainer (its open_clip semantic teacher) and the data engine (its clip embedder) both use it: it lives in
ivkit, which both may import, since neither half imports the other.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

_TORCHVISION_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_declared: list = []          # keeps the Library object alive: its definitions vanish with it


def _declare_torchvision_ops_if_unloadable() -> None:
    if "torchvision" in sys.modules or _declared:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return                                   # no torchvision: open_clip's own import error says so
    lib = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
    if lib is None:
        return
    try:
        torch.ops.load_library(str(lib))         # loads on a matching install: torchvision works as is
        return
    except OSError:
        pass
    library = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_SCHEMAS:
        library.define(schema)
    _declared.append(library)


def import_open_clip() -> ModuleType:
    """`import open_clip`, on CUDA and CPU torch builds alike; a clear error when it is not installed."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    _declare_torchvision_ops_if_unloadable()
    try:
        import open_clip
    except ImportError as e:
        raise ImportError(f"the open_clip backend needs open_clip_torch and torchvision ({e}); "
                          "or use backend: transformers") from e
    return open_clip


def check_local_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"{path}: not an open_clip model directory (no open_clip_config.json)")
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")]
    if not weights:  # open_clip would only warn and hand back random weights
        raise FileNotFoundError(f"{path}: open_clip_config.json but no weights file (.safetensors/.bin/.pth)")
    return path


def load_open_clip(path: str | Path, device: str | torch.device = "cpu"):
    """(open_clip module, model in eval mode, evaluation image transform (PIL in, tensor out),
    preprocess_cfg dict) from a local directory."""
    path = check_local_dir(path)
    open_clip = import_open_clip()
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
    preprocess = json.loads((path / "open_clip_config.json").read_text()).get("preprocess_cfg", {})
    return open_clip, model.eval(), transform, preprocess


def save_tiny_open_clip(path: str | Path, image_size: int = 32, patch_size: int = 8, width: int = 48,
                        layers: int = 3, embed_dim: int = 32, seed: int = 0) -> Path:
    """A randomly initialized tiny open_clip CLIP (ViT image tower + text tower, CLIP's BPE vocab)
    written as a local directory that `load_open_clip` and open_clip's `local-dir:` both read."""
    from safetensors.torch import save_file

    open_clip = import_open_clip()
    model_cfg = {"embed_dim": embed_dim,
                 "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width,
                                "layers": layers, "head_width": width // 4},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path
