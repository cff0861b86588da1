"""Deterministic, atomic WebDataset tar writing (stdlib tarfile).

Member names are `<key>.<ext>`; keys and extensions are checked against a strict pattern, so no
member can carry a path, a dot in the key, or anything a tar reader could resolve outside its folder.
Fixed mtime/owner make a rerun produce byte-identical shards.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ivdata.fsutil import temp_name

KEY = re.compile(r"^[A-Za-z0-9_-]+$")
EXT = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")
MTIME = 1_700_000_000


class ShardError(RuntimeError):
    pass


def member_name(key: str, ext: str) -> str:
    if not KEY.match(key):
        raise ShardError(f"sample key {key!r} must match [A-Za-z0-9_-]+")
    if not EXT.match(ext):
        raise ShardError(f"member extension {ext!r} must be lower-case dotted alphanumerics")
    return f"{key}.{ext}"


@dataclass
class WrittenSample:
    key: str
    members: list[str]
    sha256: str


@dataclass
class WrittenShard:
    path: Path
    sha256: str
    md5: str
    bytes: int
    samples: list[WrittenSample]


def write_tar(path: Path, samples: list[tuple[str, list[tuple[str, bytes | Path]]]]) -> WrittenShard:
    """samples: [(key, [(ext, bytes-or-file), ...]), ...] -> a tar at `path`, written via a temp name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    written = []
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for key, members in samples:
                    h, names = hashlib.sha256(), []
                    for ext, payload in members:
                        data = payload.read_bytes() if isinstance(payload, Path) else payload
                        info = tarfile.TarInfo(member_name(key, ext))
                        info.size, info.mtime, info.mode = len(data), MTIME, 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, io.BytesIO(data))
                        h.update(data)
                        names.append(info.name)
                    written.append(WrittenSample(key, names, h.hexdigest()))
            raw.flush()
            os.fsync(raw.fileno())
        sha, md5, n = file_digests(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return WrittenShard(path, sha, md5, n, written)


def file_digests(path: Path) -> tuple[str, str, int]:
    sha, md5, n = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            n += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), n


def read_tar_samples(path: Path) -> list[tuple[str, list[str], str]]:
    """[(key, member names, sha256 over member bytes)] in tar order; raises ShardError on a bad layout or a cut."""
    return list(iter_tar_samples(path))


def iter_tar_samples(path: Path):
    """Yield (key, member names, sha256 over member bytes) per sample in tar order, then raise ShardError if the
    tar is damaged: a bad layout, a member cut off, or an end cut at a member boundary. tarfile reads a tar that
    stops between members as a shorter whole one; only the missing end-of-archive blocks (two zero blocks after
    the last member) tell it was cut. The samples before the damage are yielded first, so a caller can check them."""
    seen: set[str] = set()
    cur_key, names, h = None, [], None
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    raise ShardError(f"{path.name}: member {info.name!r} is not a regular file")
                name = info.name
                if "/" in name or name.startswith("."):
                    raise ShardError(f"{path.name}: unsafe member name {name!r}")
                key, _, ext = name.partition(".")
                if not KEY.match(key) or not ext:
                    raise ShardError(f"{path.name}: member {name!r} is not <key>.<ext>")
                if key != cur_key:
                    if cur_key is not None:
                        yield cur_key, names, h.hexdigest()
                    if key in seen:
                        raise ShardError(f"{path.name}: members of sample {key!r} are not contiguous")
                    seen.add(key)
                    cur_key, names, h = key, [], hashlib.sha256()
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise ShardError(f"{path.name}: member {name} is cut off ({len(data)} of {info.size} bytes)")
                h.update(data)
                names.append(name)
            raw.seek(tar.offset)
            whole = raw.read(2 * tarfile.BLOCKSIZE) == bytes(2 * tarfile.BLOCKSIZE)
    except (tarfile.TarError, EOFError, OSError) as e:
        where = f" after member {names[-1]}" if names else ""
        raise ShardError(f"{path.name}: unreadable or cut short{where}: {e}") from None
    if cur_key is not None:
        yield cur_key, names, h.hexdigest()
    if not whole:
        where = f"after member {names[-1]}" if names else "before its first member"
        raise ShardError(f"{path.name}: cut short {where} (the end-of-archive blocks are missing)")
