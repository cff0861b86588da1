"""The image an image-text shard carries: decoded completely, kept as it is when it can be, else upright, on white,
shrunk and re-encoded; and the media kind of a file by its name or its first bytes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ivdata.media.image import media_kind, prepare_image
from ivdata.media.probe import MediaError


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def picture(w: int = 320, h: int = 200, mode: str = "RGB") -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0).repeat(3, 2)
    return Image.fromarray(x).convert(mode)


def test_a_jpeg_that_fits_is_kept_byte_for_byte():
    data = encode(picture(), "JPEG", quality=80)
    out = prepare_image(data, short_side=224)
    assert out.data == data and not out.rewritten and (out.ext, out.width, out.height) == ("jpg", 320, 200)


def test_a_large_jpeg_is_shrunk_to_the_short_side_never_enlarged():
    out = prepare_image(encode(picture(900, 600), "JPEG"), short_side=224)
    assert out.rewritten and (out.width, out.height) == (336, 224) and (out.source_width, out.source_height) == (900, 600)
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.format == "JPEG" and im.size == (336, 224)
    small = prepare_image(encode(picture(100, 80), "PNG"), short_side=224)
    assert (small.width, small.height) == (100, 80) and small.ext == "jpg"        # PNG written as JPEG


def test_exif_orientation_is_applied_and_alpha_lies_on_white():
    img = picture(300, 200)
    exif = img.getexif()
    exif[0x0112] = 6                                  # rotate 90 degrees clockwise to display
    out = prepare_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.rewritten and (out.width, out.height) == (200, 300)
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))                  # fully transparent
    out = prepare_image(encode(rgba, "PNG"), fmt="png")
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.mode == "RGB" and im.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("fmt, pil", [("webp", "WEBP"), ("png", "PNG"), ("jpg", "JPEG")])
def test_the_asked_format_is_what_is_stored(fmt, pil):
    out = prepare_image(encode(picture(), "PNG"), fmt=fmt)
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.format == pil and out.ext == fmt


def test_keep_leaves_png_and_webp_as_they_are_and_writes_others_as_jpeg():
    png = encode(picture(), "PNG")
    assert prepare_image(png, fmt="keep").data == png
    gif = prepare_image(encode(picture(mode="P"), "GIF"), fmt="keep")
    assert gif.ext == "jpg" and gif.source_format == "GIF"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is not an image", "not a readable image"),
])
def test_unreadable_images_fail_with_the_reason(data, reason):
    with pytest.raises(MediaError, match=reason):
        prepare_image(data)


def test_a_truncated_image_fails_even_when_its_header_reads():
    data = encode(picture(640, 480), "JPEG", quality=95)
    with pytest.raises(MediaError, match="image"):
        prepare_image(data[: len(data) // 2])
    with pytest.raises(MediaError, match="image"):
        prepare_image(data[: len(data) // 2], short_side=100)   # the draft (scaled) decode reads it all too


def test_media_kind_by_name_then_by_bytes(tmp_path):
    jpeg = encode(picture(), "JPEG")
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "noext").write_bytes(jpeg)
    (tmp_path / "video.bin").write_bytes(b"\0\0\0\x18ftypisom" + bytes(16))
    assert media_kind(str(tmp_path / "a.jpg")) == "image"                        # the name decides
    assert media_kind(str(tmp_path / "noext")) == "image"                        # else the bytes
    assert media_kind(str(tmp_path / "video.bin")) == "video"
    assert media_kind(str(tmp_path / "noext"), name="/path/clip.mp4") == "video"   # a URL's name counts
