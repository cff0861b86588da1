"""Instruction shard sets in the documented format (docs/ARCHITECTURE.md: the media member + `K.json` +
`K.conversations.json`, a list of {"from": "human"|"gpt", "value": ...} turns with the media placeholder in the
first human turn as LLaVA writes it), built from real files: the synthetic motion clips of bench/train_synthetic.py,
whose direction a question can ask about, and generated images. Used by the stage-3 tests, the learning check and
the stage-3 bench. This module does not import ivtrain or ivdata."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

import train_synthetic

QUESTIONS = ["Which way does the square move?", "Which way do the shapes move?",
             "In which direction do the objects move?", "Where do the shapes go?"]
FOLLOW_UPS = [("Answer with one word.", "{label}"), ("Do they move together?", "yes")]


def motion_conversation(label: str, rng: np.random.Generator, turns: int = 1) -> list[dict]:
    """A question about the direction (one of QUESTIONS) answered by the direction word; turns > 1 add
    follow-up exchanges."""
    out = [{"from": "human", "value": "<video>\n" + QUESTIONS[int(rng.integers(len(QUESTIONS)))]},
           {"from": "gpt", "value": label}]
    for q, a in FOLLOW_UPS[:turns - 1]:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a.format(label=label)}]
    return out


def image_bytes(rng: np.random.Generator, width: int = 56, height: int = 40) -> tuple[bytes, str]:
    """A JPEG of a coloured square on a dark ground, and the colour's name."""
    from PIL import Image

    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
    name = list(colours)[int(rng.integers(len(colours)))]
    img = np.full((height, width, 3), 20, dtype=np.uint8)
    y, x = int(rng.integers(0, height - 16)), int(rng.integers(0, width - 16))
    img[y:y + 16, x:x + 16] = colours[name]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue(), name


def write_instruction_shards(out_dir: Path, name: str, samples: list[dict], per_shard: int = 16) -> Path:
    """samples: {key, media (bytes), ext (mp4 | jpg), conversation (list) or None, meta (dict)} -> tars, a
    .wids.json index and a .txt shard list; returns the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shardlist, names = [], []
    for s in range(0, len(samples), per_shard):
        tar_path = out_dir / f"{name}-{s // per_shard:06d}.tar"
        chunk = samples[s:s + per_shard]
        with tarfile.open(tar_path, "w") as tar:
            for sample in chunk:
                members = [(sample["ext"], sample["media"]), ("json", json.dumps(sample["meta"]).encode())]
                if sample.get("conversation") is not None:
                    members.append(("conversations.json", json.dumps(sample["conversation"]).encode()))
                for ext, payload in members:
                    info = tarfile.TarInfo(f"{sample['key']}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shardlist.append({"url": tar_path.name, "nsamples": len(chunk), "filesize": tar_path.stat().st_size})
        names.append(tar_path.name)
    index = out_dir / f"{name}.wids.json"
    index.write_text(json.dumps({"wids_version": 1, "name": name, "shardlist": shardlist}))
    (out_dir / f"{name}.txt").write_text("\n".join(names) + "\n")
    return index


def motion_instruction_set(out_dir: Path, name: str, per_class: int, seed: int, turns: int = 1, images: int = 0,
                           speed: float = 1.5, frames: int = 20) -> Path:
    """Motion clips (per_class per direction) with a question about their direction, and `images` image samples
    asking for the square's colour; one shard set."""
    out_dir = Path(out_dir)
    csv_path = train_synthetic.write_motion_dataset(out_dir / "videos", per_class, split=name, seed=seed,
                                                    speed=speed, frames=frames)
    rng = np.random.default_rng(seed)
    samples = []
    for line in csv_path.read_text().splitlines()[1:]:
        path, source, source_id, label, _ = line.split(",")
        key = f"{name}_{source_id}"
        meta = {"clip_id": key, "video_id": source_id, "source": source, "source_id": source_id,
                "captions": {"V": f"the shapes move {label}"}}
        samples.append({"key": key, "media": Path(path).read_bytes(), "ext": "mp4", "meta": {**meta, "label": label},
                        "conversation": motion_conversation(label, rng, turns)})
    for i in range(images):
        data, colour = image_bytes(rng)
        key = f"{name}_image{i:04d}"
        samples.append({"key": key, "media": data, "ext": "jpg", "meta": {"clip_id": key, "source": "images",
                                                                        "source_id": key, "label": colour},
                        "conversation": [{"from": "human", "value": "<image>\nWhat colour is the square?"},
                                         {"from": "gpt", "value": colour}]})
    order = np.random.default_rng(seed + 1).permutation(len(samples))
    return write_instruction_shards(out_dir / "shards", name, [samples[i] for i in order])
