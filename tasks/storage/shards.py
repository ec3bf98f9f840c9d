"""Images stored as shards: plain tar files in WebDataset's layout, read back by offset.

A data set of a million images is a thousand files, not a million: DVC, file systems
and copies handle it in minutes, not hours. A shard holds one member per image,
named `<class>/<sha256>.<ext>` (so `tar xf` gives class folders, and WebDataset
reads the shards as they are), and an index beside the shards gives each image's
shard, the byte offset of its data and its size, so any image is one `pread` away.

Shards are written deterministically (fixed header fields, members in the order
given) and atomically (a temp name, renamed when complete), so the same images
always give the same bytes and a killed run never leaves a partial shard visible.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import threading
from collections.abc import Iterable, Iterator

from tasks.storage import files

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads an archive to a multiple of this, as tar(1) does
SUFFIX = ".tar"


def header(name: str, size: int) -> bytes:
    """The tar header of a member: only its name and size vary, so the same image gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


class Writer:
    """Appends members to an open shard file; each `add` returns the offset of the member's data."""

    def __init__(self, out):
        self.out, self.at = out, 0

    def add(self, name: str, data: bytes) -> int:
        head = header(name, len(data))
        pad = -len(data) % BLOCK
        self.out.write(head)
        self.out.write(data)
        self.out.write(b"\0" * pad)
        offset = self.at + len(head)
        self.at = offset + len(data) + pad
        return offset

    def finish(self) -> None:
        end = self.at + 2 * BLOCK  # two empty blocks end a tar archive
        self.out.write(b"\0" * (2 * BLOCK + -end % RECORD))


@contextlib.contextmanager
def writing(target: str | os.PathLike) -> Iterator[Writer]:
    """A new shard at `target`, visible under that name only once it is complete."""
    with files.atomic_path(target) as tmp, open(tmp, "xb", buffering=1 << 20) as out:
        writer = Writer(out)
        yield writer
        writer.finish()


class Reader:
    """Reads members by offset from any number of shards, keeping each shard open once."""

    def __init__(self):
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()  # reads may come from several threads

    def _fd(self, path: str) -> int:
        fd = self.open.get(path)
        if fd is None:
            with self.lock:
                if (fd := self.open.get(path)) is None:
                    fd = self.open[path] = os.open(path, os.O_RDONLY)
        return fd

    def read(self, path: str | os.PathLike, offset: int, size: int) -> bytes:
        data = os.pread(self._fd(os.fspath(path)), size, offset)
        if len(data) != size:
            raise OSError(f"{path}: {size} bytes at {offset} expected, the shard is shorter")
        return data

    def holds(self, path: str, name: str, offset: int, size: int) -> bool:
        """Does the shard at `path` hold the member `name` of `size` bytes at `offset`?"""
        try:
            return offset >= BLOCK and self.read(path, offset - BLOCK, BLOCK) == header(name, size)
        except OSError:
            return False

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)
        self.open.clear()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def members(path: str | os.PathLike) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each member of a shard this module wrote, in order."""
    with open(path, "rb") as shard:
        at = 0
        while len(block := os.pread(shard.fileno(), BLOCK, at)) == BLOCK and block.strip(b"\0"):
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
            yield info.name, at + BLOCK, info.size
            at += BLOCK + info.size + -info.size % BLOCK


def rewrite(path: str, keep: Iterable[tuple[str, int, int]]) -> dict[int, int]:
    """Rewrite the shard at `path` with only the members `keep` (name, offset, size), in that order.

    Returns each kept member's new offset by its old one. Atomic, like every write.
    """
    moved = {}
    with Reader() as reader, writing(path) as writer:
        for name, offset, size in keep:
            moved[offset] = writer.add(name, reader.read(path, offset, size))
    return moved
