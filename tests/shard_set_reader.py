"""Read shard sets with stock tools only, in a fresh interpreter: webdataset, wids and Hugging Face `datasets`
(its webdataset loader, default arguments). Prints one JSON line: per set, what each reader saw.

    python tests/shard_set_reader.py SETS_JSON [--hf-media]

SETS_JSON maps a set name to {"shards": [tar paths], "index": wids index path, "hf": bool}. Every media
member is decoded: mp4 and flac with PyAV, images with Pillow, under webdataset; under `datasets` images
through its Image feature, and with --hf-media videos and FLAC through its Video and Audio features
(torchcodec). Nothing of ivkit is imported: the format is the whole contract.
"""
import io
import json
import sys

import av
import numpy as np
import webdataset as wds
import wids
from PIL import Image

IMAGE_EXTS = ("jpg", "png", "webp")


def decode_mp4(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))


def decode_flac(data: bytes) -> tuple[int, float]:
    """(samples, peak amplitude)."""
    chunks = []
    with av.open(io.BytesIO(data)) as c:
        for frame in c.decode(audio=0):
            chunks.append(frame.to_ndarray().astype(np.float32).reshape(-1))
    x = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return int(x.size), float(np.abs(x).max()) if x.size else 0.0


def raw(value) -> bytes:
    return value.getvalue() if hasattr(value, "getvalue") else value


def summary(members: dict) -> dict:
    """What a sample holds, each media member decoded. Values are the member's bytes (webdataset) or what
    the reader decoded them to (wids: json to dict, images to PIL, BytesIO for the rest)."""
    out = {"members": sorted(members)}
    for ext, value in members.items():
        if ext == "json":
            out["json"] = value if isinstance(value, dict) else json.loads(value)
        elif ext == "mp4":
            out["frames"] = decode_mp4(raw(value))
        elif ext == "flac":
            out["flac_samples"], out["flac_peak"] = decode_flac(raw(value))
        elif ext in IMAGE_EXTS:
            im = value if isinstance(value, Image.Image) else Image.open(io.BytesIO(value))
            im.load()
            out["image_size"] = list(im.size)
        elif ext.endswith(".txt"):
            v = raw(value)
            out[ext] = v.decode("utf-8") if isinstance(v, bytes) else v
        elif ext == "conversations.json":
            out["turns"] = value if isinstance(value, list) else json.loads(raw(value))
    return out


def read_webdataset(shards: list) -> dict:
    return {s["__key__"]: summary({k: v for k, v in s.items() if not k.startswith("__")})
            for s in wds.WebDataset(shards, shardshuffle=False)}


def read_wids(index: str) -> dict:
    ds = wids.ShardListDataset(index, localname=lambda u: u)
    samples = (ds[i] for i in range(len(ds)))
    return {s["__key__"]: summary({k[1:]: v for k, v in s.items() if k.startswith(".")}) for s in samples}


def read_hf(shards: list, media: bool) -> dict:
    import datasets
    from datasets import load_dataset
    ds = load_dataset("webdataset", data_files={"train": shards}, split="train")
    if not media:           # videos and FLAC as their bytes (decoded above by PyAV): no torchcodec needed
        for name, feature in ds.features.items():
            if isinstance(feature, (datasets.Video, datasets.Audio)):
                ds = ds.cast_column(name, type(feature)(decode=False))
    out = {}
    for row in ds:
        got = {"members": sorted(k for k in row if not k.startswith("__") and row[k] is not None),
               "json": row["json"]}
        for name, value in row.items():
            feature = ds.features.get(name)
            if isinstance(feature, datasets.Image):
                value.load()
                got["image_size"] = list(value.size)
            elif isinstance(feature, datasets.Video) and media:
                got["frames"] = int(value.get_frames_in_range(0, len(value)).data.shape[0])
            elif isinstance(feature, datasets.Audio) and media:
                samples = value.get_all_samples().data.numpy()
                got["flac_samples"], got["flac_peak"] = int(samples.shape[-1]), float(np.abs(samples).max())
            elif isinstance(feature, (datasets.Video, datasets.Audio)):
                got["bytes_" + name] = len(value["bytes"])
            elif name.endswith(".txt") or name == "conversations.json":
                got["turns" if name == "conversations.json" else name] = value
        out[row["__key__"]] = got
    return out


def main() -> None:
    sets = json.loads(open(sys.argv[1]).read())
    media = "--hf-media" in sys.argv
    result = {}
    for name, spec in sets.items():
        result[name] = {"wds": read_webdataset(spec["shards"]), "wids": read_wids(spec["index"])}
        if spec.get("hf", True):
            result[name]["hf"] = read_hf(spec["shards"], media)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("ivdata", "ivtrain", "ivkit", "cli"))
    print(json.dumps({"sets": result, "ivkit_modules": leaked}))


if __name__ == "__main__":
    main()
