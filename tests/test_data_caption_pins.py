"""Which caption of a kind goes into a shard: the newest by default, or the one `--captions KIND=MODEL[@HASH]`
pins; K.json records each caption's model and prompt hash."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import webdataset as wds
from typer.testing import CliRunner

from cli import app
from ivdata.shards.verify import verify

# two versions of kind V (another model, and that model with another prompt), written in this order
VERSIONS = [("hf:blip-base", "a1a1a1a1a1a1a1a1", "old"), ("hf:blip-large", "b2b2b2b2b2b2b2b2", "large"),
            ("hf:blip-base", "c3c3c3c3c3c3c3c3", "base, new prompt")]


def add_versions(c) -> list[str]:
    with c.manifest() as m:
        clips = [r[0] for r in m.execute("SELECT clip_id FROM clips WHERE status = 'ok' ORDER BY clip_id").fetchall()]
        t0 = datetime(2026, 1, 1)
        m.insert_rows("captions", [{"clip_id": cid, "kind": "V", "text": f"{label} caption of {cid}", "lang": "en",
                                    "model": model, "prompt_hash": phash, "extra": None,
                                    "created_at": t0 + timedelta(minutes=n)}
                                   for n, (model, phash, label) in enumerate(VERSIONS) for cid in clips])
    return clips


def shard(c, *args: str):
    res = CliRunner().invoke(app, ["data", "shard", "-c", str(c.manifest_path), "--subset", "all",
                                   "--shardset", "pinned", "--txt", "V", *args])
    return res


def captions_in_shards(c) -> dict[str, tuple[dict, str]]:
    urls = [str(p) for p in c.shard_list("pinned")]
    return {s["__key__"]: (json.loads(s["json"])["captions"]["V"], s["v.txt"].decode())
            for s in wds.WebDataset(urls, shardshuffle=False)}


def test_each_pinned_caption_version_lands_in_the_shard_json_with_its_model_and_prompt_hash(small_corpus):
    c = small_corpus
    clips = add_versions(c)
    cases = [((), VERSIONS[2]),                                                # default: the newest
             (("--captions", "V=hf:blip-base@a1a1a1a1a1a1a1a1"), VERSIONS[0]),  # a model and prompt pinned
             (("--captions", "V=hf:blip-large"), VERSIONS[1]),                  # a model pinned
             (("--captions", "V=hf:blip-base"), VERSIONS[2])]                   # its newest prompt
    for args, (model, phash, label) in cases:
        res = shard(c, *args)
        assert res.exit_code == 0, res.output
        got = captions_in_shards(c)
        assert sorted(got) == clips, args
        for cid, (cap, txt) in got.items():
            assert cap == {"text": f"{label} caption of {cid}", "model": model, "prompt_hash": phash, "lang": "en"}
            assert txt == cap["text"]
        # a pin that changes the set's layout rewrites every shard; the set stays whole and consistent
        assert verify(c, "pinned")[0] == []
    with c.manifest(read_only=True) as m:
        layout = json.loads(m.scalar("SELECT layout FROM shard_sets WHERE shardset = 'pinned'"))
    assert layout["pins"] == ["V=hf:blip-base"] and layout["caption_kinds"] == ["V"]


def test_a_pin_that_names_no_caption_is_refused_in_one_line(small_corpus):
    add_versions(small_corpus)
    res = shard(small_corpus, "--captions", "V=hf:blip-huge")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "no caption of kind V by that model" in res.output and "hf:blip-large@b2b2b2b2b2b2b2b2" in res.output
    res = shard(small_corpus, "--captions", "V")
    assert res.exit_code == 2 and "KIND=MODEL" in res.output
