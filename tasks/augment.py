"""augment: canonical training-ready images as shards, colour statistics and a preview.

As in the paper, each image's shorter side is resized to `augment.image_size` and
the centre square is kept (`tasks.storage.canonical`). The images go into shards of about
`augment.shard_size`, per subset, each image to the shard its digest draws, stored in
digest order: every shard mixes all classes, so a training pipeline that reads a
few shards at a time still sees them all. Each shard is one chunk of work, run where
`augment.task_runner` says (`tasks.running.runners`), and a run resumes from the chunks it
has. The training set's RGB mean, standard deviation and principal components (for
the PCA colour augmentation), from a fixed sample of each image's pixels, go to stats.json. The random transforms of
`augment.policy` happen online in the input pipeline; the preview plot shows
exactly those, made by the same functions.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tasks import paths
from tasks.config import Config
from tasks.learning import pipeline
from tasks.running import runners
from tasks.running.progress import Progress
from tasks.running.task import step_task
from tasks.step import Step, StepError, Summary, code_closure
from tasks.storage import canonical, files, in_place, shards
from tasks.storage.canonical import Chunk, augment_chunk

STEP = Step(
    name="augment",
    params=("base", "augment"),
    deps=(paths.IMAGES, paths.SPLIT),
    outs=(paths.AUGMENTED,),
    plots=(paths.AUGMENT_PLOT,),
)
SUBSETS = ("train", "validation")
INDEX_COLUMNS = ["shard", "offset", "size", "member", "class", "label", "subset", "sha256"]
VARIANTS_PER_IMAGE = 5

augment_chunk_task = runners.chunk_task(augment_chunk, "augment_chunk")


class Plan:
    """The split's images in a scratch SQLite file, each drawn to its output shard by its digest.

    Held on disk rather than in memory, so the step's memory does not grow with the
    number of images.
    """

    def __init__(self, workdir: Path, shard_size: int):
        path = workdir / canonical.RECORDS_DIR / "plan.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.path, self.workdir = path, workdir
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -500;"
                              "CREATE TABLE images (subset TEXT, part INTEGER, sha256 TEXT, class TEXT, shard TEXT,"
                              " member TEXT, offset INTEGER, size INTEGER)")
        split = workdir / paths.SPLIT
        counts: dict[str, int] = dict.fromkeys(SUBSETS, 0)
        classes: set[str] = set()
        with open(split, newline="") as rows:
            for row in csv.DictReader(rows):
                counts[row["subset"]] += 1
                classes.add(row["class"])
        self.parts = {s: math.ceil(n / shard_size) for s, n in counts.items()}
        self.counts, self.classes = counts, sorted(classes)
        with open(split, newline="") as rows, self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (
                (r["subset"], int(r["sha256"][:15], 16) % self.parts[r["subset"]], r["sha256"], r["class"],
                 r["shard"], r["member"], int(r["offset"]), int(r["size"])) for r in csv.DictReader(rows)))
            self.db.execute("CREATE INDEX parts ON images (subset, part, sha256)")

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chunks(self, image_size: int, sources: dict[str, str | None], code: str) -> Iterator[Chunk]:
        """Every output shard's chunk, training shards first; keyed by what its images and its output depend on."""
        for subset in SUBSETS:
            for part in range(self.parts[subset]):
                rows = tuple(self.db.execute(
                    "SELECT sha256, class, shard, member, offset, size FROM images WHERE subset = ? AND part = ? "
                    "ORDER BY sha256", (subset, part)))
                material = [code, image_size, subset, part, self.parts[subset], rows,
                            sorted({(r[2], sources.get(r[2])) for r in rows})]
                key = hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]
                yield Chunk(subset, part, self.parts[subset], image_size, key, rows)


def code_version() -> str:
    """The digest of the code that makes a chunk's shard."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in code_closure(canonical.__name__))).hexdigest()


def source_digests(workdir: Path) -> dict[str, str | None]:
    """The download's shards, and the sources it kept images in, by content (remembered by their metadata, so
    this costs what changed). A source that is not what the download indexed stops the step here."""
    in_place.check(workdir / paths.IMAGES, workdir, "download")
    folder = workdir / paths.IMAGES
    names = [f"{paths.IMAGES}/{e.name}" for e in os.scandir(folder) if e.name.endswith(shards.SUFFIX)]
    return {**in_place.recorded(folder), **files.digest_paths(names, workdir)}


def remove_unplanned(workdir: Path, planned: set[str], records: set[str]) -> None:
    """Shards of an earlier plan, other files in data/augment, and records no chunk of this run uses."""
    keep = {os.path.basename(p) for p in planned | {paths.AUGMENT_INDEX, paths.STATS}}
    for entry in os.scandir(workdir / paths.AUGMENTED):
        if entry.name not in keep:
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
    for entry in os.scandir(workdir / canonical.RECORDS_DIR):
        if entry.name.endswith(".json") and entry.name not in records:
            os.unlink(entry.path)


def class_names(workdir: Path) -> dict[str, str]:
    """Each class's human-readable name, as the download step recorded them."""
    path = workdir / paths.CLASS_NAMES
    if not path.is_file():
        return {}
    with open(path, newline="") as rows:
        return {row["class"]: row["name"] for row in csv.DictReader(rows)}


def render_preview(picks: list[list], cfg: Config, stats: dict, workdir: Path) -> None:
    """plots/augmentation.png: training images (index rows) with several augmented variants each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    cols, names = VARIANTS_PER_IMAGE + 1, dict(zip(stats["classes"], stats["class_names"]))
    fig, axes = plt.subplots(len(picks), cols, figsize=(2 * cols, 2 * len(picks)), squeeze=False)
    with shards.Reader() as reader:
        for r, (shard, offset, size, _, cls, *_) in enumerate(picks):
            data = reader.read(workdir / shard, offset, size)
            axes[r][0].imshow(pipeline.decode(data).numpy())
            axes[r][0].set_title(names[cls][:28], fontsize=9)
            # The training transforms themselves, on a batch of copies of the image.
            views = pipeline.augment(tf.constant([data] * (cols - 1)), tf.constant([cfg.base.seed, r]),
                                     cfg.augment, stats)
            for c, view in enumerate(views.numpy(), 1):
                axes[r][c].imshow(np.clip(view, 0, 255).astype(np.uint8))
                axes[r][c].set_title(f"variant {c}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    with files.atomic_path(workdir / paths.AUGMENT_PLOT) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def preview_picks(picks: list[list], rows: list[list], wanted: int) -> None:
    """Add to `picks` from a training shard's index rows: a new class first, then anything."""
    seen = {p[4] for p in picks}
    for row in rows:
        if len(picks) < wanted and row[4] not in seen:
            picks.append(row)
            seen.add(row[4])
    picks += rows[: wanted - len(picks)] if len(picks) < wanted else []


def run(cfg: Config, workdir: Path) -> Summary:
    """Write data/augment/ (shards, index.csv, stats.json) and plots/augmentation.png."""
    split_path = workdir / paths.SPLIT
    if not split_path.is_file():
        raise StepError(f"missing {split_path}: run the split step first")
    a = cfg.augment
    (workdir / paths.AUGMENTED).mkdir(parents=True, exist_ok=True)
    files.remove_stale_temps(workdir / paths.AUGMENTED)
    with Plan(workdir, a.shard_size) as plan:
        if not plan.counts["train"]:
            raise StepError(f"{paths.SPLIT} has no training images")
        labels = {cls: i for i, cls in enumerate(plan.classes)}
        total, picks, planned, records = np.zeros(13), [], set(), set()
        chunks = plan.chunks(a.image_size, source_digests(workdir), code_version())
        with Progress("augment", sum(plan.counts.values()), unit="image") as bar, \
                files.atomic_path(workdir / paths.AUGMENT_INDEX) as tmp, open(tmp, "w", newline="") as out, \
                runners.chunk_runner(a, augment_chunk, augment_chunk_task, cfg, workdir, 2, bar.update) as run_chunks:
            index = csv.writer(out)
            index.writerow(INDEX_COLUMNS)
            for made in run_chunks(_noting(chunks, planned, records)):
                rows = [[*r[:5], labels[r[4]], *r[5:]] for r in made["index"]]
                index.writerows(rows)
                if made["moments"] is not None:
                    total += made["moments"]
                    preview_picks(picks, rows, a.plot_images)
    names = class_names(workdir)
    stats = {**canonical.colour_stats(total), "classes": plan.classes,
             "class_names": [names.get(c, c) for c in plan.classes], "image_size": a.image_size}
    files.write_json(workdir / paths.STATS, stats)
    remove_unplanned(workdir, planned, records)
    render_preview(picks, cfg, stats, workdir)
    counts = {s: plan.counts[s] for s in SUBSETS}
    print(f"augment: {sum(counts.values())} images at {a.image_size}px in {len(planned)} shards "
          f"({', '.join(f'{n} {s}' for s, n in counts.items())}), {len(plan.classes)} classes, "
          f"RGB mean {np.round(stats['mean'], 1).tolist()}")
    return {"step": STEP.name, "images": sum(counts.values()), "subsets": counts, "shards": len(planned),
            "classes": len(plan.classes), "mean": stats["mean"]}


def _noting(chunks: Iterator[Chunk], planned: set[str], records: set[str]) -> Iterator[Chunk]:
    """The chunks, noting each one's shard and record as it is handed out."""
    for chunk in chunks:
        planned.add(chunk.shard)
        records.add(chunk.record.name)
        yield chunk


augment_task = step_task(STEP, run)
