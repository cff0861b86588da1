"""Curation: source readers, KMash / InternVid2 recipes, dedup, eval-leakage removal, filters, report.

Everything here works on plain rows and arrays so it can be read against the papers, and imports neither
ivdata.stages nor ivdata.pipeline: the manifest stages that drive it live in ivdata/stages/dedupe.py and
ivdata/stages/score.py, the runs built from stages in ivdata/kmash_build.py and ivdata/curate_demo.py, and its
commands in ivdata/curate_cli.py.
"""
