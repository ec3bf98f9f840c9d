"""augment: canonical training-ready images, colour statistics and a preview.

As in the paper, each image's shorter side is resized to `augment.image_size` and
the centre square is kept. The training set's RGB mean, standard deviation and
principal components (for the PCA colour augmentation) go to stats.json. The
random transforms of `augment.policy` happen online in the input pipeline; the
preview plot shows exactly those, made by the same functions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from tasks import files, paths, pipeline
from tasks.config import Config
from tasks.step import Step, StepError, Summary, step_task

STEP = Step(
    name="augment",
    params=("base", "augment"),
    deps=(paths.IMAGES, paths.SPLIT),
    outs=(paths.AUGMENTED,),
    plots=(paths.AUGMENT_PLOT,),
)
VARIANTS_PER_IMAGE = 5


def canonical(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size`, then the centre `size` x `size` square."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    image = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))), interpolation=interpolation)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


class ColourStats:
    """Streaming mean, standard deviation and RGB covariance of pixels in [0, 1]."""

    def __init__(self):
        self.n, self.total, self.outer = 0, np.zeros(3), np.zeros((3, 3))

    def add(self, rgb: np.ndarray) -> None:
        pixels = rgb.reshape(-1, 3).astype(np.float64) / 255.0
        self.n += len(pixels)
        self.total += pixels.sum(0)
        self.outer += pixels.T @ pixels

    def result(self) -> dict:
        mean = self.total / self.n
        cov = self.outer / self.n - np.outer(mean, mean)
        eigval, eigvec = np.linalg.eigh(cov)
        order = eigval.argsort()[::-1]
        return {
            "mean": (mean * 255).tolist(),
            "std": (np.sqrt(np.diag(cov)) * 255).tolist(),
            "pca_eigval": eigval[order].tolist(),
            "pca_eigvec": eigvec[:, order].tolist(),
            "pixels": int(self.n),
        }


def _prepare(row: dict, workdir: Path, size: int) -> np.ndarray:
    image = cv2.imread(str(workdir / row["path"]), cv2.IMREAD_COLOR)
    if image is None:
        raise StepError(f"cannot read image {row['path']}; rerun download")
    square = canonical(image, size)
    ok, data = cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, 95])
    files.write_bytes(workdir / row["out"], data.tobytes())
    return cv2.cvtColor(square, cv2.COLOR_BGR2RGB)


def render_preview(index: pd.DataFrame, cfg: Config, stats: dict, workdir: Path) -> None:
    """plots/augmentation.png: training images with several augmented variants each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    train = index[index["subset"] == "train"]
    picks = train.groupby("class").head(1)
    picks = pd.concat([picks, train.drop(picks.index)]).head(cfg.augment.plot_images)
    cols = VARIANTS_PER_IMAGE + 1
    fig, axes = plt.subplots(len(picks), cols, figsize=(2 * cols, 2 * len(picks)), squeeze=False)
    for r, row in enumerate(picks.to_dict("records")):
        image = pipeline.load(str(workdir / row["path"]))
        axes[r][0].imshow(image.numpy())
        axes[r][0].set_title(row["class"], fontsize=9)
        # The training transforms themselves, on a batch of copies of the image.
        views = pipeline.augment(tf.repeat(image[None], cols - 1, 0), tf.constant([cfg.base.seed, r]), cfg.augment,
                                 stats)
        for c, view in enumerate(views.numpy(), 1):
            axes[r][c].imshow(np.clip(view, 0, 255).astype(np.uint8))
            axes[r][c].set_title(f"variant {c}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    with files.atomic_path(workdir / paths.AUGMENT_PLOT) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def run(cfg: Config, workdir: Path) -> Summary:
    """Write data/augment/ (images, index.csv, stats.json) and plots/augmentation.png."""
    split_path = workdir / paths.SPLIT
    if not split_path.is_file():
        raise StepError(f"missing {split_path}: run the split step first")
    split = pd.read_csv(split_path, keep_default_na=False)
    classes = sorted(split["class"].unique())
    if (split["subset"] == "train").sum() == 0:
        raise StepError(f"{paths.SPLIT} has no training images")
    out = workdir / paths.AUGMENTED
    index = split.assign(
        label=split["class"].map({c: i for i, c in enumerate(classes)}),
        out=[f"{paths.AUGMENTED}/images/{c}/{s}.jpg" for c, s in zip(split["class"], split["sha256"])],
    )
    stats = ColourStats()
    with ThreadPoolExecutor(4) as pool:
        squares = pool.map(lambda row: _prepare(row, workdir, cfg.augment.image_size), index.to_dict("records"))
        for square, subset in zip(squares, index["subset"]):
            if subset == "train":
                stats.add(square)
    index = index.drop(columns="path").rename(columns={"out": "path"})[["path", "class", "label", "subset", "sha256"]]
    keep = set(index["path"])
    for stale in (out / "images").rglob("*.jpg"):
        if stale.relative_to(workdir).as_posix() not in keep:
            stale.unlink()
    result = {**stats.result(), "classes": classes, "image_size": cfg.augment.image_size}
    files.write_csv(workdir / paths.AUGMENT_INDEX, index)
    files.write_json(workdir / paths.STATS, result)
    render_preview(index, cfg, result, workdir)
    print(f"augment: {len(index)} images at {cfg.augment.image_size}px, RGB mean {np.round(result['mean'], 1).tolist()}")
    return {"step": STEP.name, "images": len(index), "classes": classes, "mean": result["mean"]}


augment_task = step_task(STEP, run)
