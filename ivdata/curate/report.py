"""`iv corpus report`: one HTML page with PNG plots and audit tables, from the manifest alone.

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
        "videos": m.scalar("SELECT count(*) FROM videos"),
        "videos_failed": m.scalar("SELECT count(*) FROM videos WHERE status = 'failed'"),
        "clips": m.scalar("SELECT count(*) FROM clips WHERE status = 'ok'"),
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


def write_report(manifest_path: str | Path, out_dir: str | Path, title: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Manifest(manifest_path, read_only=True) as m:
        d = collect(m)
        name = m.get_meta("name") or Path(manifest_path).stem
    imgs = plots(d, out)
    summary = [{"fact": k, "value": v} for k, v in (
        ("videos", d["videos"]), ("videos failed", d["videos_failed"]), ("clips", d["clips"]),
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
th{{background:#f3f3f3}}.empty{{color:grey}}</style></head><body>
<h1>Corpus report: {html.escape(title or name)}</h1>
<p>Manifest: <code>{html.escape(str(Path(manifest_path).resolve()))}</code></p>
{_table(summary, "In numbers", "")}
{_table(d["sources"], "Clips per source", "no clips")}
{_table(d["splits"], "Clips per split", "no clips")}
{_table(d["subsets"], "Subsets", "no subsets")}
{_table(d["shards"], "Shard sets", "no shards")}
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
