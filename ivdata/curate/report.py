"""`iv corpus report`: one HTML page with the data itself, PNG plots and audit tables, from the manifest.

Gallery: per subset (and for the whole corpus) a seeded random sample of its clips and images, each shown
as a preview (a strip of frames spread over a clip; the image itself) beside its captions of every kind
(the newest of each, with its model), and a sample of the imported conversations of each dataset with the
preview of the clip or image they are about. Previews are JPEG files in gallery/ beside the page.
Plots: clip durations, resolutions, clips per source, caption languages, caption lengths, one histogram
per score metric, dedup removals per method and eval leakage per evaluation split. Tables: the corpus in
numbers, and the removals themselves (each with the clip it matched and the similarity), so a reviewer
can check any decision. Everything is read from a read-only manifest; plots with no data say so.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ivdata.manifest import Manifest  # noqa: E402

MAX_AUDIT_ROWS = 500
GALLERY_ITEMS = 8          # items shown per subset, and conversations per dataset
STRIP_FRAMES = 4           # frames in a clip's preview strip
PREVIEW_HEIGHT = 96        # pixels


def _has(m: Manifest, table: str) -> bool:
    return bool(m.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]))


def _fig(title: str):
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.set_title(title)
    return fig, ax


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, out: Path) -> str:
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out.name


def _bar(ax, labels: list, values: list, what: str, horizontal: bool = False) -> None:
    if not values:
        return _empty(ax, what)
    labels = [str(x) for x in labels]
    if horizontal:
        ax.barh(labels[::-1], values[::-1], color="#4c72b0")
        ax.set_xlabel("clips")
    else:
        ax.bar(labels, values, color="#4c72b0")
        ax.set_ylabel("clips")
        ax.tick_params(axis="x", rotation=30)


def _hist(ax, values: list, what: str, xlabel: str, bins: int = 30) -> None:
    values = [v for v in values if v is not None]
    if not values:
        return _empty(ax, what)
    ax.hist(values, bins=bins, color="#55a868")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")


def collect(m: Manifest) -> dict:
    """Every number the page shows, as plain data (also written next to it as report.json)."""
    q = m.rows
    d = {
        "videos": m.scalar("SELECT count(*) FROM videos WHERE media = 'video'"),
        "videos_failed": m.scalar("SELECT count(*) FROM videos WHERE media = 'video' AND status = 'failed'"),
        "images": m.scalar("SELECT count(*) FROM videos WHERE media = 'image'"),
        "images_failed": m.scalar("SELECT count(*) FROM videos WHERE media = 'image' AND status = 'failed'"),
        "clips": m.scalar("SELECT count(*) FROM clips WHERE status = 'ok' AND media = 'video'"),
        "conversations": m.scalar("SELECT count(*) FROM conversations WHERE status = 'ok'"),
        "conversations_failed": m.scalar("SELECT count(*) FROM conversations WHERE status = 'failed'"),
        "clip_hours": round((m.scalar("SELECT sum(duration_s) FROM clips WHERE status = 'ok'") or 0) / 3600, 4),
        "durations": [r[0] for r in m.execute("SELECT duration_s FROM clips WHERE status = 'ok'").fetchall()],
        "resolutions": q("SELECT width, height, count(*) AS n FROM clips WHERE status = 'ok' GROUP BY ALL ORDER BY n DESC"),
        "sources": q("SELECT source, count(*) AS n FROM clip_info WHERE status = 'ok' GROUP BY ALL ORDER BY n DESC"),
        "splits": q("SELECT coalesce(split, '-') AS split, count(*) AS n FROM clip_info WHERE status = 'ok' "
                    "GROUP BY ALL ORDER BY n DESC"),
        "languages": q("SELECT coalesce(lang, '?') AS lang, count(*) AS n FROM captions GROUP BY ALL ORDER BY n DESC"),
        "caption_words": q("SELECT kind, len(string_split(trim(text), ' ')) AS words FROM captions "
                           "WHERE text IS NOT NULL AND trim(text) <> ''"),
        "scores": q("SELECT metric, model, value FROM scores WHERE value IS NOT NULL"),
        "dedup_removed": q("SELECT method, count(*) AS n FROM dedup WHERE NOT kept GROUP BY ALL ORDER BY method"),
        "dedup_removed_clips": m.scalar("SELECT count(DISTINCT clip_id) FROM dedup WHERE NOT kept AND method <> 'leakage'"),
        "leakage_removed_clips": m.scalar("SELECT count(DISTINCT clip_id) FROM dedup WHERE NOT kept AND method = 'leakage'"),
        "dedup_checked": q("SELECT method, count(*) AS n FROM dedup GROUP BY ALL ORDER BY method"),
        "subsets": q("SELECT name, nclips, created_at FROM subset_defs ORDER BY name"),
        "shards": q("SELECT shardset, count(*) AS shards, sum(nsamples) AS samples, sum(bytes) AS bytes "
                    "FROM shards GROUP BY ALL ORDER BY shardset"),
        "removals": q("SELECT d.clip_id, a.source, a.source_id, d.method, d.similarity, d.matched_clip_id, "
                      "b.source AS matched_source, b.source_id AS matched_source_id, d.cluster_id FROM dedup d LEFT JOIN clip_info a ON a.clip_id = d.clip_id "
                      "LEFT JOIN clip_info b ON b.clip_id = d.matched_clip_id WHERE NOT d.kept AND d.method <> 'leakage' "
                      f"ORDER BY d.method, d.clip_id LIMIT {MAX_AUDIT_ROWS}"),
    }
    d["leakage"] = q("SELECT eval_source, eval_split, method, count(DISTINCT clip_id) AS clips FROM leakage "
                     "GROUP BY ALL ORDER BY ALL") if _has(m, "leakage") else []
    d["leaks"] = q("SELECT l.clip_id, c.source, l.method, l.eval_source, l.eval_split, l.eval_source_id, "
                   "l.eval_clip_id, l.similarity, l.evidence FROM leakage l LEFT JOIN clip_info c USING (clip_id) "
                   f"ORDER BY l.eval_source, l.clip_id LIMIT {MAX_AUDIT_ROWS}") if _has(m, "leakage") else []
    return d


def plots(d: dict, out: Path) -> list[tuple[str, str]]:
    imgs = []
    fig, ax = _fig("Clip durations")
    _hist(ax, d["durations"], "clips", "seconds")
    imgs.append(("Clip durations", _save(fig, out / "durations.png")))

    fig, ax = _fig("Resolutions (clips)")
    res = d["resolutions"][:12]
    _bar(ax, [f"{r['width']}x{r['height']}" for r in res], [r["n"] for r in res], "clips", horizontal=True)
    imgs.append(("Resolutions", _save(fig, out / "resolutions.png")))

    fig, ax = _fig("Clips per source")
    _bar(ax, [r["source"] for r in d["sources"]], [r["n"] for r in d["sources"]], "clips")
    imgs.append(("Sources", _save(fig, out / "sources.png")))

    fig, ax = _fig("Caption languages")
    _bar(ax, [r["lang"] for r in d["languages"][:15]], [r["n"] for r in d["languages"][:15]], "captions")
    imgs.append(("Languages", _save(fig, out / "languages.png")))

    fig, ax = _fig("Caption length (words), by kind")
    kinds = sorted({r["kind"] for r in d["caption_words"]})
    if kinds:
        ax.hist([[r["words"] for r in d["caption_words"] if r["kind"] == k] for k in kinds], bins=20, label=kinds)
        ax.legend()
        ax.set_xlabel("words")
    else:
        _empty(ax, "captions")
    imgs.append(("Caption lengths", _save(fig, out / "caption_lengths.png")))

    metrics = sorted({(r["metric"], r["model"]) for r in d["scores"]})
    if not metrics:
        fig, ax = _fig("Scores")
        _empty(ax, "scores")
        imgs.append(("Scores", _save(fig, out / "scores.png")))
    for i, (metric, model) in enumerate(metrics):
        fig, ax = _fig(f"{metric} ({model})")
        _hist(ax, [r["value"] for r in d["scores"] if (r["metric"], r["model"]) == (metric, model)], metric, metric)
        imgs.append((f"Score: {metric}", _save(fig, out / f"score_{i}_{metric}.png")))

    fig, ax = _fig("Removed by dedup method")
    _bar(ax, [r["method"] for r in d["dedup_removed"]], [r["n"] for r in d["dedup_removed"]], "dedup runs")
    imgs.append(("Dedup", _save(fig, out / "dedup.png")))

    fig, ax = _fig("Training clips leaking into eval splits")
    _bar(ax, [f"{r['eval_source']}/{r['eval_split']} ({r['method']})" for r in d["leakage"]],
         [r["clips"] for r in d["leakage"]], "leakage found", horizontal=True)
    imgs.append(("Leakage", _save(fig, out / "leakage.png")))
    return imgs


def _table(rows: list[dict], title: str, empty: str) -> str:
    if not rows:
        return f"<h2>{html.escape(title)}</h2><p class=empty>{html.escape(empty)}</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r[c] is None else str(r[c]))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


# ------------------------------------------------------------------------------------------------ gallery
def _sample_items(m: Manifest, subset: str) -> tuple[int, list[dict]]:
    """(items in the subset, a random sample of them): seeded by the subset's name, so a report made again
    shows the same items."""
    member, params = ("", []) if subset == "all" else (
        "AND c.clip_id IN (SELECT clip_id FROM subsets WHERE name = ?)", [subset])
    n = m.scalar(f"SELECT count(*) FROM clips c WHERE c.status = 'ok' {member}", params)
    items = m.rows(f"SELECT c.clip_id, c.media, c.path, c.duration_s, c.width, c.height, v.source FROM clips c "
                   f"JOIN videos v USING (video_id) WHERE c.status = 'ok' {member} "
                   f"ORDER BY hash(c.clip_id || ?) LIMIT {GALLERY_ITEMS}", params + [subset])
    return n, items


def _captions_of(m: Manifest, clip_ids: list[str]) -> dict[str, dict[str, dict]]:
    """clip_id -> kind -> the newest caption of the kind (text and model)."""
    out: dict[str, dict[str, dict]] = {}
    for cid, kind, text, model in m.execute(
            "SELECT clip_id, kind, text, model FROM captions WHERE clip_id IN (SELECT unnest(?::VARCHAR[])) "
            "AND text IS NOT NULL AND trim(text) <> '' ORDER BY created_at, model, prompt_hash", [clip_ids]).fetchall():
        out.setdefault(cid, {})[kind] = {"text": text, "model": model}
    return out


def preview(item: dict, out: Path) -> tuple[str | None, str | None]:
    """(file name of the item's preview JPEG in `out`, or None, and why not): a strip of STRIP_FRAMES frames
    spread over a clip, or the image itself, PREVIEW_HEIGHT pixels high."""
    import numpy as np
    from PIL import Image

    from ivdata.curate.frames import sample_frames
    name = f"{item['clip_id']}.jpg"
    try:
        frames = sample_frames(item["path"], 1 if item["media"] == "image" else STRIP_FRAMES, max_side=None)
    except Exception as e:   # a clip that no longer decodes is shown as such, the page is still written
        return None, f"{type(e).__name__}: {e}"
    tiles = []
    for f in frames:
        img = Image.fromarray(f)
        tiles.append(np.asarray(img.resize((max(1, round(img.width * PREVIEW_HEIGHT / img.height)), PREVIEW_HEIGHT),
                                           Image.Resampling.BICUBIC)))
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out / name, quality=85)
    return name, None


def collect_gallery(m: Manifest, out: Path) -> dict:
    """Per subset its sampled items with previews and captions; per dataset its sampled conversations."""
    subsets = ["all"] + [r[0] for r in m.execute("SELECT name FROM subset_defs ORDER BY name").fetchall()]
    made: dict[str, tuple] = {}

    def with_preview(item: dict) -> dict:
        if item["clip_id"] not in made:
            made[item["clip_id"]] = preview(item, out / "gallery")
        name, why = made[item["clip_id"]]
        return {**item, "preview": f"gallery/{name}" if name else None, "preview_error": why}

    sections = []
    for subset in subsets:
        n, items = _sample_items(m, subset)
        captions = _captions_of(m, [i["clip_id"] for i in items])
        sections.append({"subset": subset, "items": n,
                         "shown": [{**with_preview(i), "captions": captions.get(i["clip_id"], {})} for i in items]})
    conversations = []
    for (dataset,) in m.execute("SELECT DISTINCT dataset FROM conversations ORDER BY 1").fetchall():
        rows = m.rows("SELECT cv.conversation_id, cv.dataset, cv.task, cv.turns, c.clip_id, c.media, c.path, "
                      "c.duration_s, c.width, c.height, v.source FROM conversations cv "
                      "JOIN clips c ON c.clip_id = cv.clip_id JOIN videos v ON v.video_id = c.video_id "
                      "WHERE cv.dataset = ? AND cv.status = 'ok' AND c.status = 'ok' "
                      f"ORDER BY hash(cv.conversation_id) LIMIT {GALLERY_ITEMS}", [dataset])
        counts = m.rows("SELECT status, count(*) AS n FROM conversations WHERE dataset = ? GROUP BY 1 ORDER BY 1",
                        [dataset])
        conversations.append({"dataset": dataset, "counts": counts,
                              "shown": [{**with_preview(r), "turns": json.loads(r["turns"])} for r in rows]})
    return {"sections": sections, "conversations": conversations}


def _preview_html(item: dict) -> str:
    if item["preview"]:
        what = "frames of the clip" if item["media"] == "video" else "the image"
        return f'<img class=preview src="{html.escape(item["preview"])}" alt="{what} {html.escape(item["clip_id"])}">'
    return f'<p class=empty>no preview: {html.escape(item["preview_error"] or "")}</p>'


def _facts(item: dict) -> str:
    size = f"{item['width']}x{item['height']}"
    length = f", {item['duration_s']:.1f} s" if item["media"] == "video" and item["duration_s"] else ""
    return (f"<p class=facts><code>{html.escape(item['clip_id'])}</code> {html.escape(item['media'])} "
            f"from {html.escape(item['source'])}, {size}{length}</p>")


def gallery_html(g: dict) -> str:
    parts = ["<h2>Gallery</h2>"]
    for sec in g["sections"]:
        title = "Whole corpus" if sec["subset"] == "all" else f"Subset {sec['subset']}"
        parts.append(f"<h3>{html.escape(title)}: {len(sec['shown'])} of {sec['items']} items at random</h3>")
        if not sec["shown"]:
            parts.append("<p class=empty>nothing in it yet</p>")
        parts.append("<div class=gallery>")
        for item in sec["shown"]:
            caps = "".join(f"<dt>{html.escape(k)} <small>{html.escape(c['model'])}</small></dt>"
                           f"<dd class=caption>{html.escape(c['text'])}</dd>" for k, c in sorted(item["captions"].items()))
            parts.append(f"<div class=item>{_preview_html(item)}{_facts(item)}"
                         + (f"<dl>{caps}</dl>" if caps else "<p class=empty>no captions</p>") + "</div>")
        parts.append("</div>")
    for ds in g["conversations"]:
        counts = ", ".join(f"{c['n']} {c['status']}" for c in ds["counts"])
        parts.append(f"<h3>Conversations: {html.escape(ds['dataset'])} ({html.escape(counts)}), "
                     f"{len(ds['shown'])} at random</h3><div class=gallery>")
        for item in ds["shown"]:
            turns = "".join(f"<p class='turn {html.escape(t['from'])}'><b>{html.escape(t['from'])}</b> "
                            f"{html.escape(t['value'])}</p>" for t in item["turns"])
            task = f" task {html.escape(item['task'])}" if item["task"] else ""
            parts.append(f"<div class=item>{_preview_html(item)}{_facts(item)}"
                         f"<p class=facts><code>{html.escape(item['conversation_id'])}</code>{task}</p>{turns}</div>")
        parts.append("</div>")
    return "\n".join(parts)


def write_report(manifest_path: str | Path, out_dir: str | Path, title: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Manifest(manifest_path, read_only=True) as m:
        d = collect(m)
        g = collect_gallery(m, out)
        name = m.get_meta("name") or Path(manifest_path).stem
    imgs = plots(d, out)
    summary = [{"fact": k, "value": v} for k, v in (
        ("videos", d["videos"]), ("videos failed", d["videos_failed"]), ("clips", d["clips"]),
        ("images", d["images"]), ("images failed", d["images_failed"]),
        ("conversations", d["conversations"]), ("conversations failed", d["conversations_failed"]),
        ("clip hours", d["clip_hours"]), ("captions", sum(r["n"] for r in d["languages"])),
        ("clips removed as duplicates", d["dedup_removed_clips"]),
        ("clips removed for eval leakage", d["leakage_removed_clips"]))]
    figures = "".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(t)}"><figcaption>{html.escape(t)}'
                      f"</figcaption></figure>" for t, f in imgs)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or name)} - ivkit corpus report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
figure{{display:inline-block;margin:.5em}}img{{max-width:640px;border:1px solid #ddd}}
table{{border-collapse:collapse;margin:.5em 0;font-size:.9em}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}
th{{background:#f3f3f3}}.empty{{color:grey}}
.gallery{{display:flex;flex-wrap:wrap;gap:.8em}}.item{{border:1px solid #ddd;padding:.5em;max-width:460px}}
.item img.preview{{max-width:440px;border:0}}.facts{{font-size:.8em;color:#555;margin:.2em 0}}
dl{{margin:.3em 0}}dt{{font-weight:bold}}dd{{margin:0 0 .3em 1em}}.turn{{margin:.2em 0}}.turn.gpt{{color:#1a4d8f}}</style></head><body>
<h1>Corpus report: {html.escape(title or name)}</h1>
<p>Manifest: <code>{html.escape(str(Path(manifest_path).resolve()))}</code></p>
{_table(summary, "In numbers", "")}
{_table(d["sources"], "Clips per source", "no clips")}
{_table(d["splits"], "Clips per split", "no clips")}
{_table(d["subsets"], "Subsets", "no subsets")}
{_table(d["shards"], "Shard sets", "no shards")}
{gallery_html(g)}
<h2>Plots</h2>{figures}
{_table(d["dedup_checked"], "Dedup: clips examined per method", "dedup has not run")}
{_table(d["removals"], f"Dedup removals (first {MAX_AUDIT_ROWS})", "no duplicates removed")}
{_table(d["leaks"], f"Eval-split leakage: evidence (first {MAX_AUDIT_ROWS})", "no leakage found (or not checked)")}
</body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")
    small = {k: v for k, v in d.items() if k not in ("durations", "caption_words", "scores", "removals", "leaks")}
    (out / "report.json").write_text(json.dumps(small, indent=1, default=str))
    return out / "index.html"
