"""split: assign every good image to `train` or `validation`.

An image's subset is drawn from its content digest and the seed, so the split is
deterministic, an image keeps its subset whatever else is added or removed, and the
same image can never sit in both subsets. Each image is drawn on its own, so every
class gets `split.validation_fraction` of its images in expectation (stratified);
the step warns when a small class ends with one subset empty, rather than move an
image to fill it. With `split.validation: source`, an image whose source gives its
subset (ILSVRC-2012's validation set, an archive's val/ folder) keeps that one, so
the validation set is the official one.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from pathlib import Path

from tasks import paths
from tasks.config import Config
from tasks.running import report
from tasks.running.task import step_task
from tasks.step import Step, StepError, Summary
from tasks.storage import files

STEP = Step(
    name="split",
    params=("base", "split"),
    deps=(paths.IMAGES, paths.MANIFEST),
    outs=(paths.SPLIT,),
)
# data/split.csv: where each image is (as in the image index) and its subset.
COLUMNS = ["sha256", "class", "subset", "shard", "member", "offset", "size"]


def score(sha256: str, seed: int) -> float:
    """A uniform number in [0, 1) drawn from the image's digest and the seed."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def subset(sha256: str, fraction: float, seed: int) -> str:
    return "validation" if score(sha256, seed) < fraction else "train"


def assigned(row: dict, cfg: Config) -> str:
    """An image's subset: the source's, when `split.validation: source` and the source gives one; else drawn."""
    if cfg.split.validation == "source" and row["source_subset"]:
        return row["source_subset"]
    return subset(row["sha256"], cfg.split.validation_fraction, cfg.base.seed)


def run(cfg: Config, workdir: Path) -> Summary:
    """Write data/split.csv from the image index, a row at a time (memory stays flat)."""
    index_path = workdir / paths.IMAGE_INDEX
    if not index_path.is_file():
        raise StepError(f"missing {index_path}: run the download step first")
    counts: Counter[tuple[str, str]] = Counter()
    ends: dict[str, int] = {}  # per shard, where its last image ends
    with open(index_path, newline="") as source, files.atomic_path(workdir / paths.SPLIT) as tmp, \
            open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        marked = 0
        for row in csv.DictReader(source):
            row["subset"] = assigned(row, cfg)
            marked += bool(row["source_subset"])
            counts[row["class"], row["subset"]] += 1
            ends[row["shard"]] = max(ends.get(row["shard"], 0), int(row["offset"]) + int(row["size"]))
            writer.writerow(row)
        short = [shard for shard, end in ends.items()
                 if not os.path.isfile(workdir / shard) or os.path.getsize(workdir / shard) < end]
        if short:
            raise StepError(f"{len(short)} shards in {paths.IMAGE_INDEX} are missing or cut short, e.g. {short[0]}; "
                            "rerun download")
    classes = sorted({cls for cls, _ in counts})
    if cfg.split.validation == "source":
        print(f"split: {marked} images in the subset their source gives them"
              + (f", {sum(counts.values()) - marked} drawn" if marked < sum(counts.values()) else ""))
    table = {cls: {s: counts[cls, s] for s in ("train", "validation")} for cls in classes}
    print(f"split: {sum(counts.values())} images in {len(classes)} classes; per class and subset:\n"
          + report.class_table(table))
    for name, key in (("validation", "validation"), ("training", "train")):
        if empty := [cls for cls in classes if not counts[cls, key]]:
            print(f"split: warning: {len(empty)} classes have no {name} images: {report.some(empty)}")
    return {"step": STEP.name, "images": sum(counts.values()),
            "subsets": {s: sum(counts[c, s] for c in classes) for s in ("train", "validation")},
            "classes": len(classes)}


split_task = step_task(STEP, run)
