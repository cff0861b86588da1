"""Loading a tower's weights from an earlier stage's export or a released checkpoint: strict, with a shape report,
and with the one adaptation a video tower needs to be loaded at another frame count or resolution (its position
tables resized, ivtrain.models.pos_embed) or as an image tower (one frame).

The towers of the objectives live beside this module: vit (the InternVideo2 video encoder), teachers (frozen image
and video teachers), and the text, audio, QFormer, LLM, predictor and diffusion towers of the later stages.
"""
from __future__ import annotations

import math

import torch

from ivtrain.convert import ConversionError, ShapeReport, compare
from ivtrain.models.pos_embed import resize_pos_table
from ivtrain.models.vit import InternVideo2

RELEASED_SPATIAL = 16   # 224 px at patch 14: the grid of every released InternVideo2 checkpoint


def infer_grid(tokens: int, spatial_hint: tuple[int, int]) -> tuple[int, int, int]:
    """The (T, H, W) grid of a position table of `tokens` rows (CLS excluded), trying the target's spatial grid,
    then the released 16 x 16."""
    for h, w in (spatial_hint, (RELEASED_SPATIAL, RELEASED_SPATIAL)):
        if tokens % (h * w) == 0:
            return tokens // (h * w), h, w
    side = math.isqrt(tokens)
    if side * side == tokens:
        return 1, side, side
    raise ConversionError(f"cannot tell the grid of a position table of {tokens} tokens: give its source grid")


def load_vision_tower(encoder: InternVideo2, sd: dict[str, torch.Tensor],
                      source_grid: tuple[int, int, int] | None = None) -> ShapeReport:
    """Load `sd` (ivkit encoder names: patch_embed.*, cls_token, pos_embed, blocks.*, clip_projector.*, and
    img_pos_embed when the source has one) into `encoder`. Every tensor must match by name and shape, except:
    pos_embed is resized from `source_grid` (or the grid its length implies) to the encoder's; img_pos_embed is
    resized in space, or, when the source has none, keeps the encoder's sin-cos start (what the released stage 2
    does on top of a stage-1 checkpoint); a source's img_pos_embed that the encoder lacks is reported unused.
    Raises ConversionError with the report when anything else differs."""
    sd = dict(sd)
    adapted, unused = [], []
    target, cls = encoder.grid, encoder.num_cls
    table = sd.get("pos_embed")
    if table is not None and tuple(table.shape) != tuple(encoder.pos_embed.shape):
        grid = tuple(source_grid) if source_grid else infer_grid(table.shape[1] - cls, target[1:])
        sd["pos_embed"] = resize_pos_table(table, grid, target, cls)
        adapted.append(f"pos_embed resized from a {'x'.join(map(str, grid))} grid to {'x'.join(map(str, target))}")
    has_image_table = hasattr(encoder, "img_pos_embed")
    if "img_pos_embed" in sd and not has_image_table:
        unused.append("img_pos_embed")
        del sd["img_pos_embed"]
    elif has_image_table and "img_pos_embed" not in sd:
        sd["img_pos_embed"] = encoder.img_pos_embed.detach().clone()
        adapted.append("img_pos_embed keeps its sin-cos start (the source has no image table)")
    elif has_image_table and tuple(sd["img_pos_embed"].shape) != tuple(encoder.img_pos_embed.shape):
        image = sd["img_pos_embed"]
        grid = infer_grid(image.shape[1] - cls, target[1:])
        sd["img_pos_embed"] = resize_pos_table(image, (1, *grid[1:]), (1, *target[1:]), cls)
        adapted.append(f"img_pos_embed resized from {grid[1]}x{grid[2]} to {target[1]}x{target[2]}")
    report = compare(sd, {k: v.shape for k, v in encoder.state_dict().items()})
    report.adapted, report.unused = adapted, unused
    if not report.ok:
        raise ConversionError("checkpoint does not fit the vision tower:\n" + str(report))
    encoder.load_state_dict(sd, strict=True)
    return report
