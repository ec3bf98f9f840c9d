"""Atomic writes and content digests: the two file primitives every step uses."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


# Temp names: a random tag, the process id and a counter (unique without drawing random bytes each time).
_TAG = secrets.token_hex(3)
_serial = itertools.count()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[str]:
    """Yield a temp path (a string) beside `target`; rename it over `target` only on success.

    The temp name keeps the target's suffix, so writers that look at it (Keras
    wants `.h5`, OpenCV wants `.jpg`) work unchanged. A killed run leaves at most a
    `.tmp-*` file, which readers never mistake for the real one. (Plain os calls
    and strings: the download step writes thousands of images a minute through here.)
    """
    folder, name = os.path.split(os.fspath(target))
    tmp = os.path.join(folder, f".{name}.tmp-{_TAG}{os.getpid()}-{next(_serial)}{os.path.splitext(name)[1]}")
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = os.fspath(target)  # a full disk's error names no file: say which one it stopped
        raise


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "xb") as out:
        out.write(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode())


def write_json(target: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """JSON, keys sorted unless the caller's order is the point (headline figures first)."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def write_csv(target: str | Path, frame) -> None:
    """Write a pandas DataFrame atomically, without the index."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def remove_stale_temps(folder: str | Path) -> None:
    """Delete temp files a killed run left behind under `folder`."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# Digests are reused while a file's size, modification time and inode are unchanged,
# as DVC's state database does, so checking a data set costs what changed, not what
# exists. A file modified within this long before it was hashed is hashed again next
# time (a write in the same timestamp tick could otherwise go unseen).
RACY_NS = 20_000_000
DIGESTS = ".alexnet/digests.sqlite"
FLUSH = 10_000  # digests kept in memory before they are written


class Digests:
    """Content digests of files and folders, remembered by their metadata in `<workdir>/.alexnet/digests.sqlite`.

    A folder's digest is remembered with a fingerprint of its files' names, sizes,
    modification times and inodes, so an unchanged folder of a million images costs a
    walk over its metadata, not a lookup per file.
    """

    def __init__(self, workdir: str | Path):
        path = Path(workdir) / DIGESTS
        self.db: sqlite3.Connection | None = None
        self.fresh: list[tuple] = []
        self.folders: list[tuple] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.executescript(
                "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                "inode INTEGER, hashed_ns INTEGER, sha256 TEXT);"
                "CREATE TABLE IF NOT EXISTS folders (path TEXT PRIMARY KEY, fingerprint TEXT, sha256 TEXT);")
        except (OSError, sqlite3.Error):  # a read-only or odd file system: hash everything, remember nothing
            self.db = None

    def __enter__(self) -> "Digests":
        return self

    def __exit__(self, *exc) -> None:
        if self.db is not None:
            self._save()
            self.db.close()

    def _save(self) -> None:
        """Write the digests computed so far, in one transaction (a commit per row would sync the disk per file)."""
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error), self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", self.fresh)
                self.db.executemany("INSERT OR REPLACE INTO folders VALUES (?, ?, ?)", self.folders)
        self.fresh, self.folders = [], []

    def file(self, path: str, st: os.stat_result) -> str:
        """The digest of the file at `path` (absolute), whose `os.stat` is `st`."""
        if self.db is not None:
            found = self.db.execute("SELECT sha256 FROM digests WHERE path = ? AND size = ? AND mtime_ns = ? "
                                    "AND inode = ? AND hashed_ns - mtime_ns > ?",
                                    (path, st.st_size, st.st_mtime_ns, st.st_ino, RACY_NS)).fetchone()
            if found:
                return found[0]
        hashed_ns = time.time_ns()
        digest = sha256_file(path)
        self.fresh.append((path, st.st_size, st.st_mtime_ns, st.st_ino, hashed_ns, digest))
        if len(self.fresh) >= FLUSH:
            self._save()
        return digest

    def path(self, path: str | Path) -> str | None:
        """Content digest of a file or a whole folder (names and contents); None if absent."""
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not os.path.isdir(path):
            return self.file(path, st)
        # Two walks rather than a list of every file's metadata: a folder of a million images costs
        # the same memory as one of ten.
        metadata, newest = hashlib.sha256(), 0
        for relative, _, st in _walk(path):
            metadata.update(f"{relative}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
            newest = max(newest, st.st_mtime_ns)
        fingerprint = metadata.hexdigest()
        if self.db is not None:
            found = self.db.execute("SELECT sha256 FROM folders WHERE path = ? AND fingerprint = ?",
                                    (path, fingerprint)).fetchone()
            if found:
                return found[0]
        digest = hashlib.sha256()
        for relative, file, st in _walk(path):
            digest.update(f"{relative}\0{self.file(file, st)}\n".encode())
        if time.time_ns() - newest > RACY_NS:  # none may still be changing
            self.folders.append((path, fingerprint, digest.hexdigest()))
        return digest.hexdigest()


def _walk(folder: str, prefix: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative posix path, path, stat) of every file under `folder`, sorted by relative path."""
    with os.scandir(folder) as found:
        entries = sorted(found, key=lambda e: e.name)
    for entry in entries:
        relative = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _walk(entry.path, relative + "/")
        elif entry.is_file():
            yield relative, entry.path, entry.stat()


def digest_paths(paths: list[str], workdir: Path) -> dict[str, str | None]:
    with Digests(workdir) as digests:
        return {path: digests.path(workdir / path) for path in paths}
