"""split: assign every good image to `train` or `validation`.

An image's subset is a pure function of its content digest and the seed, so the
split is deterministic, an image keeps its subset whatever else is added or
removed, and the same image can never sit in both subsets. Each image is drawn on
its own, so every class gets `split.validation_fraction` of its images in
expectation (stratified); the step warns when a small class ends with one subset
empty, rather than move an image to fill it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from tasks import files, paths
from tasks.config import Config
from tasks.step import Step, StepError, Summary, step_task

STEP = Step(
    name="split",
    params=("base", "split"),
    deps=(paths.IMAGES, paths.MANIFEST),
    outs=(paths.SPLIT,),
)


def score(sha256: str, seed: int) -> float:
    """A uniform number in [0, 1) drawn from the image's digest and the seed."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(images: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    validation = [score(s, seed) < fraction for s in images["sha256"]]
    return images.assign(subset=["validation" if v else "train" for v in validation])


def run(cfg: Config, workdir: Path) -> Summary:
    """Write data/split.csv (path, class, sha256, subset) from the manifest's good images."""
    manifest_path = workdir / paths.MANIFEST
    if not manifest_path.is_file():
        raise StepError(f"missing {manifest_path}: run the download step first")
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    images = manifest.loc[manifest["status"] == "ok", ["path", "class", "sha256"]]
    if images["sha256"].duplicated().any():  # download keeps each image once, in one class
        raise StepError(f"{manifest_path} lists an image twice; rerun download")
    missing = [p for p in images["path"] if not (workdir / p).is_file()]
    if missing:
        raise StepError(f"{len(missing)} images in the manifest are missing on disk, e.g. {missing[0]}; rerun download")
    split = assign(images, cfg.split.validation_fraction, cfg.base.seed)
    split = split.sort_values(["class", "sha256"]).reset_index(drop=True)
    files.write_csv(workdir / paths.SPLIT, split)
    counts = split.groupby(["class", "subset"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["train", "validation"], fill_value=0)
    print(f"split: images per class and subset\n{counts.to_string()}")
    for cls, row in counts.iterrows():
        if not row.all():
            print(f"split: warning: class {cls} has no {'validation' if row['train'] else 'training'} images")
    return {"step": STEP.name, "counts": {c: {k: int(v) for k, v in r.items()} for c, r in counts.iterrows()}}


split_task = step_task(STEP, run)
