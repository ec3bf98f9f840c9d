"""evaluate: score the saved model on the validation set.

Centre-crop predictions give accuracy, per-class precision and recall and a
confusion matrix (CSV for `dvc plots`, and a PNG), plus a grid of validation images
labelled with their predicted class: blue when right, red when wrong.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from tasks import files, model, paths, pipeline  # noqa: F401  (model registers the LRN layer)
from tasks.config import Config
from tasks.step import Step, StepError, Summary, step_task

STEP = Step(
    name="evaluate",
    params=("augment", "evaluate"),
    deps=(paths.AUGMENTED, paths.MODEL),
    outs=(),
    metrics=(paths.EVAL,),
    plots=(paths.CONFUSION, paths.CONFUSION_PLOT, paths.PREDICTIONS_PLOT),
)


def scores(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp, predicted_i, actual_i = confusion[i, i], confusion[:, i].sum(), confusion[i].sum()
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4), "support": int(actual_i)}
    return {
        "accuracy": round(float((labels == predicted).mean()), 4),
        "images": int(len(labels)),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: np.ndarray, classes: list[str], target: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), n in np.ndenumerate(confusion):
        ax.text(j, i, str(n), ha="center", va="center", color="black")
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.tight_layout()
    with files.atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def plot_predictions(images: np.ndarray, labels, predicted, probabilities, classes, target: Path) -> None:
    plt = _figure()
    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, y, p, prob in zip(axes.flat, images, labels, predicted, probabilities):
        ax.imshow(image.astype(np.uint8))
        ax.text(3, 12, f"{classes[p]} {prob:.0%}", color="blue" if p == y else "red", fontsize=11,
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 1})
    fig.tight_layout()
    with files.atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def run(cfg: Config, workdir: Path) -> Summary:
    """Write metrics/eval.json and the confusion and prediction plots."""
    index, stats = pipeline.read_prepared(workdir)
    classes = stats["classes"]
    val = index[index["subset"] == "validation"]
    if val.empty:
        raise StepError("no validation images: raise split.validation_fraction or download more images")
    model_path = workdir / paths.MODEL
    if not model_path.is_file():
        raise StepError(f"missing {model_path}: run the train step first")
    net = keras.models.load_model(model_path, compile=False)
    images = np.concatenate([x.numpy() for x, _ in pipeline.evaluation_set(val, cfg.augment, 64)])
    probabilities = net.predict(images, batch_size=64, verbose=0)
    labels, predicted = val["label"].to_numpy(), probabilities.argmax(1)
    result = scores(labels, predicted, classes)

    files.write_json(workdir / paths.EVAL, {k: v for k, v in result.items() if k != "confusion"})
    files.write_csv(
        workdir / paths.CONFUSION,
        pd.DataFrame({"actual": [classes[i] for i in labels], "predicted": [classes[i] for i in predicted]}),
    )
    plot_confusion(np.array(result["confusion"]), classes, workdir / paths.CONFUSION_PLOT)
    shown = np.linspace(0, len(val) - 1, min(cfg.evaluate.grid_images, len(val))).astype(int)  # across classes
    plot_predictions(images[shown], labels[shown], predicted[shown], probabilities[shown, predicted[shown]], classes,
                     workdir / paths.PREDICTIONS_PLOT)
    print(f"evaluate: validation accuracy {result['accuracy']:.1%} on {result['images']} images")
    return {"step": STEP.name, "accuracy": result["accuracy"], "images": result["images"], "per_class": result["per_class"]}


evaluate_task = step_task(STEP, run)
