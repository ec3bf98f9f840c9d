"""Images inside archives, read in place: an entry names an archive, a byte range and a member.

An uncompressed tar stores each member's bytes contiguously, so an image inside one,
even inside a tar inside a tar as in ILSVRC2012_img_train.tar, is one `pread` away
once its offset is known. Listing an archive reads its headers only (seeking over
the data), so a 140 GB archive is indexed without being extracted or copied.
Compressed archives (.tar.gz, .zip), which cannot be read in place, are repacked
once into a plain tar holding only the members wanted, streamed, never extracted
to a file per image.

An entry is `tar:<archive>#<offset>+<size>/<member>`: the archive's path (relative
to the project or absolute, %-escaped), the member's data offset and size, and its
name for people to read. Every name is checked as extraction would: an absolute or
`..` name refuses the archive, links and devices are skipped, sizes are capped.
"""

from __future__ import annotations

import os
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

from tasks.errors import StepError
from tasks.storage import shards

MAX_MEMBERS = 5_000_000  # entries an archive may hold (ILSVRC-2012's training set: 1,281,167 in 1,000 tars)
ENTRY = re.compile(r"^tar:(?P<path>[^#]+)#(?P<offset>\d+)\+(?P<size>\d+)/(?P<name>.*)$")

Member = tuple[str, int, int]  # (name, data offset, size)


class ArchiveError(StepError):
    """An archive that cannot be used; the message names it and says why."""


def location(path: Path, workdir: Path) -> str:
    """How entries and the image index name a local file: relative to `workdir` when inside it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(workdir.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def entry(archive: Path, member: Member, workdir: Path) -> str:
    """The list entry of a member of `archive`."""
    name, offset, size = member
    return f"tar:{quote(location(archive, workdir))}#{offset}+{size}/{name}"


def parse(text: str, workdir: Path) -> tuple[Path, int, int] | None:
    """(archive path, offset, size) of an entry; None if it is not one."""
    match = ENTRY.match(text)
    if not match:
        return None
    return workdir / unquote(match["path"]), int(match["offset"]), int(match["size"])


def where(text: str) -> tuple[str, int] | None:
    """(the archive as the entry names it, the member's data offset) of an entry; None if it is not one."""
    match = ENTRY.match(text)
    return (unquote(match["path"]), int(match["offset"])) if match else None


def unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts or "\0" in name


def _checked(name: str, archive: Path, count: int) -> None:
    if count > MAX_MEMBERS:
        raise ArchiveError(f"{archive.name}: more than {MAX_MEMBERS} entries; refused")
    if unsafe(name):
        raise ArchiveError(f"{archive.name}: unsafe entry {name!r} (absolute or outside the archive); refused")


def is_plain_tar(path: Path) -> bool:
    """An uncompressed tar, readable in place (the `ustar` magic at offset 257)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    return len(head) == 512 and head[257:262] == b"ustar"


def members(archive: Path, nested: Callable[[str], bool] | None = None) -> Iterator[Member]:
    """The regular files of an uncompressed tar with their data offsets, from the headers alone.

    With `nested`, members that are themselves tars (as the per-class tars of
    ILSVRC2012_img_train.tar) are opened when `nested(name)` says so, and their
    files listed as `<inner>.tar/<name>` with offsets into the outer file; the others
    are skipped unread. A member that runs past the end of the file (a truncated
    download) is an error, not a short image.
    """
    end, count = archive.stat().st_size, 0
    try:
        with tarfile.open(archive, "r:") as tar:
            for info in tar:
                tar.members.clear()  # tarfile keeps every header it has read: not a million of them
                count += 1
                _checked(info.name, archive, count)
                if not info.isfile():
                    continue
                if info.offset_data + info.size > end:
                    raise ArchiveError(f"{archive.name}: cut short inside {info.name!r} (an incomplete copy?)")
                if nested and info.name.endswith(".tar"):
                    if not nested(info.name):
                        continue
                    for name, offset, size in _inner(tar.fileobj, info, archive):
                        count += 1
                        _checked(name, archive, count)
                        yield f"{info.name}/{name}", offset, size
                else:
                    yield info.name, info.offset_data, info.size
    except tarfile.TarError as exc:
        raise ArchiveError(f"{archive.name}: not a readable tar archive ({exc})") from None


def _inner(handle, outer: tarfile.TarInfo, archive: Path) -> Iterator[Member]:
    """A tar stored uncompressed inside another: its regular files, at offsets in the outer file."""
    handle.seek(outer.offset_data)
    limit = outer.offset_data + outer.size
    with tarfile.open(fileobj=handle, mode="r:") as tar:  # offsets come out absolute: it starts at tell()
        for info in tar:
            if info.offset >= limit:  # past its end (an inner tar without its end blocks)
                break
            if info.offset_data + info.size > limit:
                raise ArchiveError(f"{archive.name}: {outer.name} is cut short inside {info.name!r}")
            if info.isfile():
                yield info.name, info.offset_data, info.size
            if info.offset_data + info.size >= limit:
                break


def repack(archive: Path, target: Path, wanted: Callable[[str], bool], max_bytes: int) -> list[Member]:
    """The wanted regular members of a compressed tar or a zip, copied into a plain tar at `target`.

    Streamed (a .tar.gz is read once, front to back) and written atomically; returns
    the members of the new tar. Unsafe names refuse the archive; more than
    `max_bytes` in all too.
    """
    found, total = [], 0
    with shards.writing(target) as out:
        for count, (name, size, regular, open_member) in enumerate(_any_members(archive), 1):
            _checked(name, archive, count)
            if not regular or not wanted(name):
                continue
            total += size
            if total > max_bytes:
                raise ArchiveError(f"{archive.name}: its images come to more than data.max_bytes={max_bytes}; "
                                   "refused")
            with open_member() as member:
                found.append((name, out.add(name, member.read()), size))
    return found


def _any_members(archive: Path) -> Iterator[tuple[str, int, bool, Callable]]:
    """(name, size, is a regular file, opener) of each member of a tar (any compression) or zip archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                yield info.filename, info.file_size, not (info.is_dir() or is_link), lambda i=info: z.open(i)
        return
    try:
        with tarfile.open(archive) as tar:
            for member in tar:  # streamed: a .tar.gz is read once, front to back
                tar.members.clear()  # as in members(): not every header of a million-image archive kept
                yield member.name, member.size, member.isfile(), lambda m=member: tar.extractfile(m)
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = " ".join(str(exc).split())  # one line: tarfile lists every method it tried, a line each
        raise ArchiveError(f"{archive.name}: not a readable .tar, .tar.gz or .zip archive ({reason})") from None


def read_member(archive: Path, name: str) -> bytes:
    """One member of a small archive (a devkit), found by its file name at any depth."""
    for member, _, regular, open_member in _any_members(archive):
        if regular and PurePosixPath(member).name == name:
            with open_member() as handle:
                return handle.read()
    raise ArchiveError(f"{archive.name}: holds no {name}")
