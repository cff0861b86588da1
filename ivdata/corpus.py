"""A corpus = a manifest (the facts) + a data root (clip store, downloads, shards).

Names resolve under $IVKIT_HOME (default: the current directory): `manifests/NAME.duckdb` and
`corpora/NAME/`. A path ending in .duckdb is taken as the manifest itself; its data root is read
from the manifest, so a corpus can live anywhere.

A data root belongs to one corpus: two manifests over one root would delete each other's clips in
progress and overwrite each other's shards. The root holds `ivkit-corpus.json` naming its owner (the
corpus id kept in the manifest's meta, its name and manifest path); `init` refuses a root that another
corpus owns (or that holds corpus data with no owner), `open` refuses a manifest whose root is owned by
another corpus.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from ivdata.fsutil import atomic_write_text
from ivdata.manifest import Manifest, ManifestError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OWNER_FILE = "ivkit-corpus.json"
DATA_DIRS = ("clips", "shards", "downloads", "embeddings")


def root_owner(root: Path) -> dict | None:
    """The owner record of a data root ({"corpus_id", "name", "manifest"}), or None when unclaimed."""
    try:
        return json.loads((Path(root) / OWNER_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{Path(root) / OWNER_FILE}: unreadable owner record ({e})") from None


def _owned_elsewhere(root: Path, owner: dict) -> str:
    manifest = owner.get("manifest")
    gone = (f" (that manifest no longer exists: delete {Path(root) / OWNER_FILE} to give the root to another "
            "corpus)") if manifest and not Path(manifest).exists() else ""
    return (f"data root {root} belongs to corpus {owner.get('name')!r} (manifest {manifest}); two corpora "
            f"cannot share a root: give this one its own --root{gone}")


def ivkit_home() -> Path:
    return Path(os.environ.get("IVKIT_HOME", ".")).resolve()


@dataclass(frozen=True)
class Corpus:
    name: str
    manifest_path: Path
    root: Path

    @property
    def clips_dir(self) -> Path:
        return self.root / "clips"

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    def shard_dir(self, shardset: str = "all") -> Path:
        return self.shards_dir / shardset

    def wids_index(self, shardset: str = "all") -> Path:
        return self.shard_dir(shardset) / f"{shardset}.wids.json"

    def shard_list(self, shardset: str = "all") -> list[Path]:
        """The shard files of a shard set as recorded in the manifest, in order."""
        with self.manifest(read_only=True) as m:
            rows = m.execute("SELECT path FROM shards WHERE shardset = ? ORDER BY shard_index", [shardset]).fetchall()
        return [self.shards_dir / r[0] for r in rows]

    def manifest(self, read_only: bool = False) -> Manifest:
        return Manifest(self.manifest_path, read_only=read_only)

    # -- creation / lookup -----------------------------------------------------------------------
    @classmethod
    def init(cls, name: str, home: Path | None = None, root: Path | None = None,
             manifest_path: Path | None = None) -> "Corpus":
        if not NAME.match(name):
            raise ManifestError(f"corpus name {name!r}: use letters, digits, '_', '-' and '.'")
        home = Path(home).resolve() if home else ivkit_home()
        mpath = Path(manifest_path) if manifest_path else home / "manifests" / f"{name}.duckdb"
        root = Path(root).resolve() if root else home / "corpora" / name
        existing_root = corpus_id = None
        if mpath.exists():
            with Manifest(mpath, read_only=True, check_version=False) as m:
                existing_root, corpus_id = m.get_meta("root"), m.get_meta("corpus_id")
            if existing_root and Path(existing_root) != root:
                raise ManifestError(f"{mpath} already belongs to a corpus rooted at {existing_root}")
        # Decide about the root before anything is written, so a refused init leaves no manifest behind.
        owner = root_owner(root)
        if owner is not None and owner.get("corpus_id") != corpus_id:
            raise ManifestError(_owned_elsewhere(root, owner))
        if owner is None and existing_root is None and any((root / d).exists() for d in DATA_DIRS):
            raise ManifestError(f"data root {root} already holds corpus data ({', '.join(DATA_DIRS)}) and no "
                                f"{OWNER_FILE}: give this corpus its own --root")
        corpus_id = corpus_id or uuid.uuid4().hex
        with Manifest(mpath, create=True) as m:
            m.set_meta("name", name)
            m.set_meta("root", str(root))
            m.set_meta("corpus_id", corpus_id)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / OWNER_FILE, json.dumps(
            {"corpus_id": corpus_id, "name": name, "manifest": str(mpath.resolve())}, indent=1) + "\n")
        return cls(name, mpath.resolve(), root)

    @classmethod
    def open(cls, name_or_path: str | Path, home: Path | None = None) -> "Corpus":
        p = Path(name_or_path)
        if p.suffix == ".duckdb":
            mpath = p
        else:
            home = Path(home).resolve() if home else ivkit_home()
            mpath = home / "manifests" / f"{name_or_path}.duckdb"
        if not mpath.exists():
            raise ManifestError(f"no corpus manifest at {mpath} (create it with `iv corpus init {p.stem}`)")
        with Manifest(mpath, read_only=True, check_version=False) as m:   # old files too, so they can migrate
            name, root, corpus_id = m.get_meta("name"), m.get_meta("root"), m.get_meta("corpus_id")
        if not root:
            raise ManifestError(f"{mpath} has no data root recorded (not made by `iv corpus init`?)")
        owner = root_owner(Path(root))
        if owner is not None and owner.get("corpus_id") != corpus_id:
            raise ManifestError(_owned_elsewhere(Path(root), owner))
        return cls(name or mpath.stem, mpath.resolve(), Path(root))
