"""Curation: source readers, KMash / InternVid2 recipes, dedup, eval-leakage removal, filters, report.

Everything here works on plain rows and arrays so it can be read against the papers; the manifest
stages that drive it live in ivdata/stages/dedupe.py and ivdata/stages/score.py.
"""
