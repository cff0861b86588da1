"""The corpus report shows the data: per subset random clips (frame strips) and images with their captions, and
conversations with their media; a real browser loads every preview."""
from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from ivdata import pipeline
from ivdata.corpus import Corpus
from ivdata.curate.report import GALLERY_ITEMS, PREVIEW_HEIGHT, STRIP_FRAMES, write_report
from ivdata.stages.cut import CutConfig
from ivdata.stages.instructions import import_instructions
from ivdata.stages.split import SplitConfig
from test_data_importers import FIXTURES, image, llava_media, video


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A corpus of captioned videos, captioned images and LLaVA conversations, and its report."""
    tmp = tmp_path_factory.mktemp("gallery")
    video(tmp / "v" / "a.mp4", 2.5, seed=1)
    video(tmp / "v" / "b.mp4", 3.0, seed=2, audio="tone")
    with open(tmp / "v" / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "caption"], ["a.mp4", "a square <moves> across & away"],
                                 ["b.mp4", "a second square, with a tone"]])
    for i in range(3):
        image(tmp / "im" / f"i{i}.jpg", 10 + i)
        (tmp / "im" / f"i{i}.txt").write_text(f"coloured bands, picture {i}")
    llava_media(tmp / "llava")
    c = Corpus.init("gallery", home=tmp)
    import_instructions(c, FIXTURES / "llava_instruct.json", "llava", tmp / "llava")
    pipeline.probe(c)
    pipeline.split(c, SplitConfig(method="spans", min_s=0.5))        # the conversation's video, whole
    pipeline.ingest(c, [str(tmp / "v" / "list.csv"), str(tmp / "im")])
    pipeline.probe(c)
    pipeline.images(c)
    pipeline.split(c, SplitConfig(method="whole", min_s=0.5))
    pipeline.cut(c, CutConfig(mode="reencode", short_side=96))
    with c.manifest() as m:
        m.select_subset("pictures", where="media = 'image'")
    page = write_report(c.manifest_path, tmp / "report")
    with c.manifest(read_only=True) as m:
        captions = [r[0] for r in m.execute("SELECT text FROM captions WHERE text <> ''").fetchall()]
        turns = [t["value"] for (raw,) in m.execute(
            "SELECT turns FROM conversations WHERE status = 'ok' AND clip_id IS NOT NULL").fetchall()
            for t in json.loads(raw)]
        nclips = m.scalar("SELECT count(*) FROM clips WHERE status = 'ok'")
    return {"page": page, "captions": captions, "turns": turns, "nclips": nclips}


def test_the_gallery_shows_previews_captions_and_conversations(reported):
    page = reported["page"]
    text = page.read_text()
    assert nclips_shown(text) == min(GALLERY_ITEMS, reported["nclips"])
    assert "Subset pictures" in text and "Conversations: llava_instruct" in text
    for caption in reported["captions"]:          # every caption of every shown item (all are shown here)
        assert html.escape(caption) in text
    for value in reported["turns"]:
        assert html.escape(value) in text
    previews = re.findall(r'<img class=preview src="([^"]+)" alt="(frames of the clip|the image) ', text)
    assert previews
    for src, what in previews:
        with Image.open(page.parent / src) as im:
            im.load()
            assert im.height == PREVIEW_HEIGHT
            if what == "frames of the clip":            # a strip: STRIP_FRAMES frames side by side
                assert im.width >= STRIP_FRAMES * PREVIEW_HEIGHT


def nclips_shown(text: str) -> int:
    whole = text.split("<h3>Whole corpus", 1)[1].split("<h3>", 1)[0]
    return whole.count('<div class=item>')


PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img')];
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken', JSON.stringify(
    imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'))));
});
</script>"""


@pytest.mark.slow
def test_the_gallery_renders_in_headless_chromium_with_every_preview_loaded(reported):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here: `make test-slow` installs Debian's (apt-get install -y chromium) where it can")
    page = reported["page"]
    probe = page.with_name(".probe.html")        # the page as written, plus a script that reports its images
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", res.stdout)
    assert body, res.stdout[:2000]
    nimages = int(re.search(r'data-images="(\d+)"', body.group(1)).group(1))
    broken = json.loads(html.unescape(re.search(r'data-broken="([^"]*)"', body.group(1)).group(1)))
    assert nimages == page.read_text().count("<img ") and nimages > 0
    assert broken == []
    for caption in reported["captions"]:         # the captions are on the rendered page
        assert html.escape(caption, quote=False) in res.stdout
