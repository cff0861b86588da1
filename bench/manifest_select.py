"""SQL subset selection over a synthetic 10M-clip manifest.

Builds a manifest with the real schema (1M videos, 10M clips, 10M scores), then times
`Manifest.select_subset` (filter + materialize the named subset) against the bare scan that counts
the same rows in the same connection: the ratio is the cost of materializing a subset.

    python bench/manifest_select.py [--clips 10000000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ivdata.manifest import Manifest  # noqa: E402


def populate(m: Manifest, nclips: int) -> None:
    nvideos = max(nclips // 10, 1)
    m.execute(f"""
        INSERT INTO videos (video_id, source, source_id, uri, path, sha256, bytes, label, split, duration_s, fps,
                            width, height, vcodec, acodec, has_video, has_audio, status)
        SELECT 'v' || lpad(i::VARCHAR, 16, '0'), ['k710','ssv2','hacs','anet','mit'][1 + i % 5], 'yt' || i,
               '/data/' || i || '.mp4', '/data/' || i || '.mp4', md5(i::VARCHAR), 1000000 + i % 9000000,
               'label' || (i % 700), CASE WHEN i % 20 = 0 THEN 'val' ELSE 'train' END,
               5 + (i % 600), 25, 640, 360, 'h264', CASE WHEN i % 3 = 0 THEN NULL ELSE 'aac' END, true, i % 3 <> 0,
               'probed'
        FROM range({nvideos}) t(i)""")
    m.execute(f"""
        INSERT INTO clips (clip_id, video_id, start_s, end_s, split_method, path, sha256, bytes, duration_s,
                           num_frames, fps, width, height, has_audio, status)
        SELECT 'v' || lpad((i // 10)::VARCHAR, 16, '0') || '_' || lpad(((i % 10) * 3000)::VARCHAR, 8, '0'),
               'v' || lpad((i // 10)::VARCHAR, 16, '0'), (i % 10) * 3.0, (i % 10) * 3.0 + 2 + (i % 28),
               'shots', '/clips/' || i || '.mp4', md5(i::VARCHAR), 200000 + i % 800000, 2 + (i % 28),
               (2 + (i % 28)) * 25, 25, 640, 360, (i // 10) % 3 <> 0,
               CASE WHEN i % 97 = 0 THEN 'failed' ELSE 'ok' END
        FROM range({nclips}) t(i)""")
    m.execute(f"""
        INSERT INTO scores (clip_id, metric, value, model)
        SELECT 'v' || lpad((i // 10)::VARCHAR, 16, '0') || '_' || lpad(((i % 10) * 3000)::VARCHAR, 8, '0'),
               'clip_sim', ((i * 2654435761) % 1000) / 1000.0, 'bench'
        FROM range({nclips}) t(i)""")


WHERE = "source IN ('k710', 'ssv2') AND duration_s BETWEEN 4 AND 20 AND has_audio AND split = 'train'"
SQL = ("SELECT c.clip_id FROM clip_info c JOIN scores s ON s.clip_id = c.clip_id AND s.metric = 'clip_sim' "
       "WHERE c.status = 'ok' AND s.value > 0.5 AND c.source <> 'mit'")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=10_000_000)
    ap.add_argument("--out", default="bench/out/manifest_select.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "big.duckdb"
        t = time.perf_counter()
        with Manifest(p, create=True) as m:
            populate(m, args.clips)
        t_build = time.perf_counter() - t
        size = p.stat().st_size
        res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "clips": args.clips, "build_s": round(t_build, 2), "manifest_bytes": size}
        with Manifest(p) as m:
            for name, kw, count_sql in [
                ("where", {"where": WHERE}, f"SELECT count(*) FROM clip_info WHERE status = 'ok' AND ({WHERE})"),
                ("sql_join_scores", {"sql": SQL}, f"SELECT count(*) FROM ({SQL})"),
            ]:
                t = time.perf_counter()
                n_scan = m.scalar(count_sql)
                t_scan = time.perf_counter() - t
                t = time.perf_counter()
                n = m.select_subset(f"bench_{name}", **kw)
                t_sel = time.perf_counter() - t
                t = time.perf_counter()
                ids = m.subset_clip_ids(f"bench_{name}")
                t_read = time.perf_counter() - t
                assert n == n_scan == len(ids)
                res[name] = {"rows": n, "scan_count_s": round(t_scan, 3), "select_subset_s": round(t_sel, 3),
                             "read_subset_ids_s": round(t_read, 3),
                             "select_vs_scan_ratio": round(t_sel / t_scan, 2)}
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
