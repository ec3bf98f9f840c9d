"""split: assign every good image to `train` or `validation`.

An image's subset is a pure function of its content digest and the seed, so the
split is deterministic, an image keeps its subset when others are added, and the
same image can never sit in both subsets. Per class, the validation share is
`split.validation_fraction` in expectation; a class always gets at least one
validation image and keeps at least one training image.
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
    images = images.assign(score=[score(s, seed) for s in images["sha256"]])
    images["subset"] = (images["score"] < fraction).map({True: "validation", False: "train"})
    for _, group in images.groupby("class"):
        if len(group) < 2:
            continue
        if not (group["subset"] == "validation").any():
            images.loc[group["score"].idxmin(), "subset"] = "validation"
        if not (group["subset"] == "train").any():
            images.loc[group["score"].idxmax(), "subset"] = "train"
    return images.drop(columns="score")


def run(cfg: Config, workdir: Path) -> Summary:
    """Write data/split.csv (path, class, sha256, subset) from the manifest's good images."""
    manifest_path = workdir / paths.MANIFEST
    if not manifest_path.is_file():
        raise StepError(f"missing {manifest_path}: run the download step first")
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    images = manifest.loc[manifest["status"] == "ok", ["path", "class", "sha256"]]
    images = images.drop_duplicates("sha256", keep=False)  # one image under two classes: keep neither
    missing = [p for p in images["path"] if not (workdir / p).is_file()]
    if missing:
        raise StepError(f"{len(missing)} images in the manifest are missing on disk, e.g. {missing[0]}; rerun download")
    split = assign(images, cfg.split.validation_fraction, cfg.base.seed)
    split = split.sort_values(["class", "sha256"]).reset_index(drop=True)
    files.write_csv(workdir / paths.SPLIT, split)
    counts = split.groupby(["class", "subset"]).size().unstack(fill_value=0)
    print(f"split: images per class and subset\n{counts.to_string()}")
    return {"step": STEP.name, "counts": {c: {k: int(v) for k, v in r.items()} for c, r in counts.iterrows()}}


split_task = step_task(STEP, run)
