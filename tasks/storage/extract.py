"""Look at stored images: list them, or copy them out of their shards into a folder (`alexnet images`).

Images live in shards (`tasks.storage.shards`); the indexes say where each one is. This
reads an index a row at a time, so finding a class's images in a data set of a
million costs a pass over its index, not memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from tasks import paths
from tasks.errors import StepError
from tasks.storage import files, shards

INDEXES = {"downloaded": paths.IMAGE_INDEX, "canonical": paths.AUGMENT_INDEX}


def matching(workdir: Path, which: str = "downloaded", classes: list[str] | None = None,
             digests: list[str] | None = None, subset: str | None = None) -> Iterator[dict]:
    """Index rows of the images whose class is one of `classes` and whose digest starts with one of
    `digests` (any, when not given), in the given subset (canonical images only)."""
    index = workdir / INDEXES[which]
    if not index.is_file():
        step = "download" if which == "downloaded" else "augment"
        raise StepError(f"missing {index}: run the {step} step first")
    wanted_classes = set(classes or [])
    prefixes = tuple(d.lower() for d in digests or [])
    with open(index, newline="") as rows:
        for row in csv.DictReader(rows):
            if ((not wanted_classes or row["class"] in wanted_classes)
                    and (not prefixes or row["sha256"].startswith(prefixes))
                    and (subset is None or row.get("subset") == subset)):
                yield row


def copy_out(rows: Iterator[dict], workdir: Path, out: Path) -> list[Path]:
    """Each image as `out/<member>` (`<class>/<sha256>.<ext>`), written atomically; the files written."""
    written = []
    with shards.Reader() as reader:
        for row in rows:
            target = out / row["member"]
            files.write_bytes(target, reader.read(workdir / row["shard"], int(row["offset"]), int(row["size"])))
            written.append(target)
    return written
