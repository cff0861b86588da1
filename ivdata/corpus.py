"""A corpus = a manifest (the facts) + a data root (clip store, downloads, shards).

Names resolve under $IVKIT_HOME (default: the current directory): `manifests/NAME.duckdb` and
`corpora/NAME/`. A path ending in .duckdb is taken as the manifest itself; its data root is read
from the manifest, so a corpus can live anywhere.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ivdata.manifest import Manifest, ManifestError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
        with Manifest(mpath, create=True) as m:
            existing = m.get_meta("root")
            if existing and Path(existing) != root:
                raise ManifestError(f"{mpath} already belongs to a corpus rooted at {existing}")
            m.set_meta("name", name)
            m.set_meta("root", str(root))
        root.mkdir(parents=True, exist_ok=True)
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
            name, root = m.get_meta("name"), m.get_meta("root")
        if not root:
            raise ManifestError(f"{mpath} has no data root recorded (not made by `iv corpus init`?)")
        return cls(name or mpath.stem, mpath.resolve(), Path(root))
