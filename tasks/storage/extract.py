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

# Where to find images, and the step that writes it: the downloads' own index, or the split's copy of it
# with each image's subset (the same columns plus `subset`), or the canonical images' index.
INDEXES = {"downloaded": (paths.IMAGE_INDEX, "download"), "split": (paths.SPLIT, "split"),
           "canonical": (paths.AUGMENT_INDEX, "augment")}


def matching(workdir: Path, which: str = "downloaded", classes: list[str] | None = None,
             digests: list[str] | None = None, subset: str | None = None) -> Iterator[dict]:
    """Index rows of the images whose class is one of `classes` and whose digest starts with one of
    `digests` (any, when not given), in the given subset (downloaded images: as the split assigned)."""
    if which == "downloaded" and subset:
        which = "split"
    name, step = INDEXES[which]
    index = workdir / name
    if not index.is_file():
        raise StepError(f"missing {index}: run the {step} step first")
    known = class_names(workdir)
    if unknown := [name for name in classes or [] if known and name not in known]:
        raise StepError(f"no class named {unknown[0]}: the classes are listed in {paths.CLASS_NAMES}, "
                        f"e.g. {', '.join(known[:3])}")
    wanted_classes = set(classes or [])
    prefixes = tuple(d.lower() for d in digests or [])
    with open(index, newline="") as rows:
        for row in csv.DictReader(rows):
            if ((not wanted_classes or row["class"] in wanted_classes)
                    and (not prefixes or row["sha256"].startswith(prefixes))
                    and (subset is None or row.get("subset") == subset)):
                yield row


def class_names(workdir: Path) -> list[str]:
    """The classes the download step kept images of, in its order; empty before it ran."""
    path = workdir / paths.CLASS_NAMES
    if not path.is_file():
        return []
    with open(path, newline="") as rows:
        return [row["class"] for row in csv.DictReader(rows)]


def copy_out(rows: Iterator[dict], workdir: Path, out: Path) -> list[Path]:
    """Each image as `out/<member>` (`<class>/<sha256>.<ext>`), written atomically; the files written."""
    written = []
    with shards.Reader() as reader:
        for row in rows:
            target = out / row["member"]
            files.write_bytes(target, reader.read(workdir / row["shard"], int(row["offset"]), int(row["size"])))
            written.append(target)
    return written
