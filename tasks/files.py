"""Atomic writes and content digests: the two file primitives every step uses."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "xb") as out:
        out.write(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode())


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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


def digest_path(path: str | Path) -> str | None:
    """Content digest of a file or a whole folder (names and contents); None if absent."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def digest_paths(paths: list[str], workdir: Path) -> dict[str, str | None]:
    return {path: digest_path(workdir / path) for path in paths}
