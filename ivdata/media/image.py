"""Images: what kind of media a file is, whether an image decodes, and the image a shard carries.

`media_kind` decides video or image from the file name's extension, and from the first bytes where the
name says nothing (a URL without an extension). `prepare_image` decodes an image completely (a truncated
or unreadable file fails here, with the reason), then either keeps its bytes (already in the wanted format,
small enough, upright) or writes it again: EXIF orientation applied, alpha laid on white, the short side
shrunk to `short_side` (never enlarged), encoded as JPEG, WebP or PNG.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

from ivdata.media.probe import MediaError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp", ".wmv"}
# the formats a shard carries as they are (member extension by PIL format)
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
FORMATS = ("jpg", "webp", "png", "keep")      # what --format takes; keep: JPEG/PNG/WebP as they are, others JPEG
EXIF_ORIENTATION = 0x0112


def sniff(head: bytes) -> str | None:
    """'image' or 'video' from a file's first bytes, None when they say neither."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[4:8] == b"ftyp" or head.startswith((b"\x1a\x45\xdf\xa3", b"FLV")) or (
            head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    return None


def media_kind(path: str, name: str | None = None) -> str:
    """'image' or 'video': by the extension of `name` (the file's own, or its URL's), else by content.
    A file that is neither by both tests is taken as a video, whose probe then says what is wrong with it."""
    ext = os.path.splitext(name or path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    with open(path, "rb") as f:
        return sniff(f.read(16)) or "video"


@dataclass
class PreparedImage:
    data: bytes          # what the clip store and the shards hold
    ext: str             # its member extension: jpg | png | webp
    width: int
    height: int
    source_format: str   # PIL's name of the source's format (JPEG, PNG, ...)
    source_width: int
    source_height: int
    frames: int          # frames in the source (animated GIF / WebP: the first is kept)
    rewritten: bool      # False: the source's bytes as they were


def _target_size(w: int, h: int, short_side: int | None) -> tuple[int, int]:
    if not short_side or min(w, h) <= short_side:
        return w, h
    s = short_side / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def prepare_image(data: bytes, short_side: int | None = None, fmt: str = "jpg", quality: int = 90) -> PreparedImage:
    """Decode `data` completely (MediaError with the reason when it cannot be), and return the image to store."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if fmt not in FORMATS:
        raise ValueError(f"image format {fmt!r}: one of {', '.join(FORMATS)}")
    if not data:
        raise MediaError("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise MediaError("not a readable image (unknown or damaged format)") from None
    except (OSError, ValueError) as e:
        raise MediaError(f"not a readable image: {e}") from None
    with im:
        src_format, (w, h) = im.format or "?", im.size
        frames = getattr(im, "n_frames", 1)
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        tw, th = _target_size(w, h, short_side)
        if im.format == "JPEG" and (tw, th) != (w, h):
            im.draft("RGB", (tw, th))          # libjpeg decodes at 1/2, 1/4 or 1/8 scale: much faster, same result size
        try:
            im.load()                           # every byte is decoded: a truncated file fails here
        except (OSError, ValueError, SyntaxError) as e:
            raise MediaError(f"image does not decode: {e}") from None
        if w < 1 or h < 1:
            raise MediaError(f"image has no pixels ({w}x{h})")
        out_ext = KEPT_FORMATS.get(src_format) if fmt == "keep" else fmt
        keep = (out_ext == KEPT_FORMATS.get(src_format) and (tw, th) == (w, h) and orientation == 1
                and im.mode in ("RGB", "L") and frames == 1)
        if keep:
            return PreparedImage(data, out_ext, w, h, src_format, w, h, frames, False)
        img = ImageOps.exif_transpose(im) if orientation != 1 else im
        img = _rgb(img)
        tw, th = _target_size(img.width, img.height, short_side)
        if (tw, th) != img.size:
            img = img.resize((tw, th), Image.Resampling.BICUBIC)
        out_ext = out_ext or "jpg"
        buf = io.BytesIO()
        if out_ext == "jpg":
            img.save(buf, "JPEG", quality=quality)
        elif out_ext == "webp":
            img.save(buf, "WEBP", quality=quality)
        else:
            img.save(buf, "PNG")
        return PreparedImage(buf.getvalue(), out_ext, img.width, img.height, src_format, w, h, frames, True)


def _rgb(img):
    """RGB pixels; transparent parts laid on white (what a viewer shows), not on the black of dropped alpha."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_rgb(path: str, max_side: int | None = None):
    """An image file as an RGB uint8 array (H, W, 3), upright, the longer side shrunk to max_side."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            if max_side and im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))
            img = _rgb(ImageOps.exif_transpose(im))
    except (OSError, ValueError, SyntaxError) as e:
        raise MediaError(f"{path}: image does not decode: {e}") from None
    if max_side and max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC)
    return np.asarray(img)
