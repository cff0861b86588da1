"""Reconstruction previews of an InternVideo-Next stage-1 run: `iv eval recon RUN SHARDS --out grid.png`.

Each clip is loaded as evaluation sees it (centre frames and crop), masked as in training (the run's teacher
guides the mask; each clip's seed draws it), encoded, and every hidden patch is sampled by DDPM from the diffusion
decoder conditioned on the predictor's output there. The PNG has three rows per clip: the frames, the frames with
the hidden patches greyed out, and the frames with the hidden patches replaced by their reconstruction.

Reported: the mean squared error, over hidden patches and in the data's normalized pixel space, of the DDPM
reconstruction and of mean-fill (each hidden patch filled with its clip's mean visible pixel, per channel), the
floor any reconstruction that uses the visible patches should beat.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ivtrain.config import build_recipe
from ivtrain.data.loader import video_loader
from ivtrain.devices import pick_device
from ivtrain.export import load_artifact, read_export
from ivtrain.models.patches import patchify, unpatchify


def load_run(run_dir: str | Path, device: torch.device, random_init: bool = False):
    """The run's objective rebuilt from its recipe.json (teacher and predictor directories as trained), with the
    exported weights (or its random initialization: a baseline)."""
    from ivtrain.objectives import objective_class

    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise FileNotFoundError(f"{run_dir} holds no recipe.json: not a training run directory")
    recipe = build_recipe(json.loads(recipe_file.read_text()))
    objective = objective_class(recipe.objective, recipe.objective_module)(recipe, device)
    if getattr(objective.trainable, "decoder", None) is None:
        raise ValueError(f"{run_dir}: a {recipe.objective} run without a diffusion decoder has nothing to reconstruct")
    if not random_init:
        meta = read_export(run_dir)
        objective.load_export({name: load_artifact(run_dir, name) for name in meta["artifacts"]})
    objective.trainable.to(device).eval()
    return objective


def pixel_range(mean: list[float], std: list[float], patch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) of each value of a channel-first patch: pixels in [0, 1] as the data normalizes them."""
    m, s = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    return ((0 - m) / s).repeat_interleave(patch * patch), ((1 - m) / s).repeat_interleave(patch * patch)


@torch.no_grad()
def reconstruct(objective, batch: dict, steps: int | None = None, seed: int = 0, temperature: float = 1.0,
                clip: bool = True) -> dict[str, torch.Tensor]:
    """Patches (B, N, 3 p p) of the clip, of its DDPM reconstruction and of its mean-fill (the visible patches kept
    in both), the visible mask (B, N) and the normalized clip. `clip`: the sampler's x_0 estimates are clamped to
    the range of normalized pixels."""
    inputs = objective.prepare(batch)
    student, data = objective.trainable, objective.recipe.data
    video, visible = inputs["video"], inputs["visible"]
    cfg = student.encoder.cfg
    z = student.conditions(student.encoder(video, visible).tokens, visible)                 # (B, N_hidden, Z)
    noise = torch.randn(z.shape[0] * z.shape[1], student.decoder.channels,
                        generator=torch.Generator().manual_seed(seed))
    bounds = pixel_range(data.mean, data.std, cfg.patch_size, z.device) if clip else None
    fresh = torch.Generator().manual_seed(seed + 1)
    sampled = student.decoder.sample(z.flatten(0, 1), noise.to(z.device), steps, fresh, temperature, bounds)
    truth = patchify(video.float(), cfg.patch_size, cfg.tubelet_size, order="cthw")        # (B, N, 3 p p)
    hidden = ~visible
    recon = truth.clone()
    recon[hidden] = sampled.to(recon.dtype)
    # mean-fill: each clip's mean visible pixel, per channel (channel-first patches: 3 blocks of p p values)
    by_channel = truth.reshape(*truth.shape[:2], 3, -1)
    seen = visible[..., None, None].float()
    mean = (by_channel * seen).sum((1, 3), keepdim=True) / (seen.sum(1, keepdim=True) * by_channel.shape[-1])
    mean_fill = torch.where(hidden[..., None, None], mean.expand_as(by_channel), by_channel).reshape(truth.shape)
    return {"video": video, "visible": visible, "truth": truth, "recon": recon, "mean_fill": mean_fill}


def to_uint8(video: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """(3, T, H, W) normalized -> (T, H, W, 3) uint8."""
    m, s = torch.tensor(mean).view(3, 1, 1, 1), torch.tensor(std).view(3, 1, 1, 1)
    pixels = (video.float().cpu() * s + m).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def preview_rows(out: dict, grid, patch: int, mean, std, min_side: int = 96) -> list[np.ndarray]:
    """Three image rows (H, T * W, 3) per clip: frames, masked frames (hidden patches grey), reconstruction;
    small frames enlarged (nearest neighbour) to at least `min_side` pixels so that the patches can be seen."""
    masked = out["truth"].clone()
    masked[~out["visible"]] = torch.tensor([(0.5 - m) / s for m, s in zip(mean, std)]).repeat_interleave(patch * patch)
    rows = []
    for i in range(out["truth"].shape[0]):
        for patches in (out["truth"], masked, out["recon"]):
            frames = to_uint8(unpatchify(patches[i:i + 1].cpu(), grid, patch)[0], mean, std)
            zoom = max(1, -(-min_side // frames.shape[1]))
            frames = frames.repeat(zoom, axis=1).repeat(zoom, axis=2)
            rows.append(np.concatenate(list(frames), axis=1))
    return rows


def run_recon(run_dir: str | Path, shards: str, out: str | Path, clips: int = 4, steps: int | None = None,
              seed: int = 0, device: str = "auto", random_init: bool = False, temperature: float = 1.0,
              clip: bool = True) -> dict:
    """Reconstruct the first `clips` clips of `shards` (whole batches of up to 16), write the PNG grid to `out`,
    return the errors."""
    from PIL import Image

    dev = pick_device(device, "--device")
    objective = load_run(run_dir, dev, random_init)
    data = replace(objective.recipe.data, shards=shards, sources=[], train=False, shuffle=False,
                   batch_size=min(clips, 16), num_workers=1)
    loader, _ = video_loader(data, data.num_frames, seed=seed, epochs=1, keep_last=True)
    encoder = objective.trainable.encoder
    sums = {"recon": 0.0, "mean_fill": 0.0}
    values = done = 0
    rows: list[np.ndarray] = []
    for batch in loader:
        if done >= clips:
            break
        if not batch["size"]:
            continue
        result = reconstruct(objective, batch, steps, seed + done, temperature, clip)
        hidden = ~result["visible"]
        for name in sums:
            sums[name] += float(((result[name] - result["truth"])[hidden] ** 2).sum())
        values += int(hidden.sum()) * result["truth"].shape[-1]
        rows += preview_rows(result, encoder.grid, encoder.cfg.patch_size, data.mean, data.std)
        done += batch["size"]
    if not done:
        raise ValueError(f"{shards}: no clip decoded")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return {"clips": done, "mse_ddpm": sums["recon"] / values, "mse_mean_fill": sums["mean_fill"] / values,
            "hidden_values": values, "steps": steps or objective.trainable.decoder.diffusion.num_timesteps,
            "temperature": temperature, "clip": clip, "png": str(out)}
