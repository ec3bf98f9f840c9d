"""Images used where they already are, and the record that they have not changed since.

fetch_urls lists the members of local archives by byte offset, and the download keeps
local images where they are (the image index points into ILSVRC2012_img_train.tar,
say, rather than into a copy). Both record, beside their output, the content digest of
every archive and folder they indexed (stat-keyed, `files.Digests`: free while the
file is untouched). A step reading through such an index checks the record first, so
a source moved, rewritten or cut short stops it with a message naming the source,
before any image is read from it, never giving a wrong image.
"""

from __future__ import annotations

from pathlib import Path

from tasks.errors import StepError
from tasks.storage import files

RECORD = "sources.json"


def digests(sources: list[str], workdir: Path) -> dict[str, str]:
    """The content digest of each of `sources` (paths as the index names them) that exists."""
    return {path: digest for path, digest in files.digest_paths(sources, workdir).items() if digest}


def record(folder: Path, found: dict[str, str]) -> None:
    """`<folder>/sources.json`, when there are any such sources."""
    if found:
        files.write_json(folder / RECORD, found)
    else:
        (folder / RECORD).unlink(missing_ok=True)


def recorded(folder: Path) -> dict[str, str]:
    path = folder / RECORD
    return files.read_json(path) if path.is_file() else {}


def check(folder: Path, workdir: Path, indexed_by: str) -> None:
    """Stop if a source recorded in `folder` is gone or is no longer what `indexed_by` (a step) indexed."""
    before = recorded(folder)
    for path, digest in files.digest_paths(list(before), workdir).items():
        if digest != before[path]:
            what, how = ("is missing", "moved or deleted?") if digest is None else \
                ("has changed", "rewritten, added to or cut short?")
            raise StepError(f"{path} {what} since the {indexed_by} step indexed the images in it ({how}); nothing "
                            f"was read from it: run {indexed_by} again (alexnet run, or dvc repro)")
