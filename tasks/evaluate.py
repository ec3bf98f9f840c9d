"""evaluate: score the saved model on the validation set, as the paper did.

Two views of each image: the centre crop, and the paper's ten crops (four corners
and the centre, each also flipped, softmax averaged). For each: accuracy, top-1
and top-5 error (top-5 only with more than five classes), per-class precision,
recall and F1. The headline view (ten crops when `evaluate.ten_crop`) also gives
the confusion matrix (CSV for `dvc plots`, and a PNG), the misclassified images,
most confident first, and a grid of validation images labelled with their
predicted class: blue when right, red when wrong. The model card gains the
evaluation in models/alexnet.card.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from tasks import files, model, paths, pipeline, shards  # noqa: F401  (model registers the custom layers)
from tasks.config import Config
from tasks.step import Step, StepError, Summary, step_task

STEP = Step(
    name="evaluate",
    params=("augment", "evaluate"),
    deps=(paths.AUGMENTED, paths.MODEL, paths.MODEL_CARD),
    outs=(paths.EVAL_CARD,),
    metrics=(paths.EVAL,),
    plots=(paths.CONFUSION, paths.CONFUSION_PLOT, paths.PREDICTIONS_PLOT),
)
TOP_K = 5


def top_k_error(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose true class is not among the k most probable."""
    best = np.argsort(-probabilities, axis=1)[:, :k]
    return float(1.0 - (best == labels[:, None]).any(axis=1).mean())


def scores(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, top-1/top-5 error, per-class precision, recall and F1, confusion matrix."""
    predicted = probabilities.argmax(1)
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp, predicted_i, actual_i = confusion[i, i], confusion[:, i].sum(), confusion[i].sum()
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                           "f1": round(float(f1), 4), "support": int(actual_i)}
    top5 = top_k_error(labels, probabilities, TOP_K) if len(classes) > TOP_K else None
    return {
        "accuracy": round(float((labels == predicted).mean()), 4),
        "top1_error": round(top_k_error(labels, probabilities, 1), 4),
        "top5_error": round(top5, 4) if top5 is not None else "n/a: 5 or fewer classes",
        "images": int(len(labels)),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def predict_views(net: keras.Model, views) -> np.ndarray:
    """Softmax per view for batches of [B, V, s, s, 3]: returns [N, V, classes]."""
    out = []
    for batch in views:
        b, v = batch.shape[:2]
        out.append(net.predict_on_batch(np.reshape(batch.numpy(), (b * v, *batch.shape[2:]))).reshape(b, v, -1))
    return np.concatenate(out)


def misclassified(val: pd.DataFrame, labels, probabilities, classes, limit: int, workdir: Path) -> list[dict]:
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:limit]
    return [{"image": val["member"].iloc[i], "shard": Path(val["shard"].iloc[i]).relative_to(workdir).as_posix(),
             "actual": classes[labels[i]], "predicted": classes[predicted[i]],
             "probability": round(float(probabilities[i, predicted[i]]), 4)}
            for i in wrong]


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
    """Write metrics/eval.json, the confusion and prediction plots and the model card with its evaluation."""
    index, stats = pipeline.read_prepared(workdir)
    classes = stats["classes"]
    val = index[index["subset"] == "validation"].reset_index(drop=True)
    if val.empty:
        raise StepError("no validation images: raise split.validation_fraction or download more images")
    for required in (paths.MODEL, paths.MODEL_CARD):
        if not (workdir / required).is_file():
            raise StepError(f"missing {workdir / required}: run the train step first")
    net = keras.models.load_model(workdir / paths.MODEL, compile=False)
    ev = cfg.evaluate
    probabilities = predict_views(net, pipeline.eval_views(val, cfg.augment, ev.batch_size, ten=ev.ten_crop))
    labels = val["label"].to_numpy()
    views = {"centre_crop": scores(labels, probabilities[:, 0], classes)}
    if ev.ten_crop:
        views["ten_crop"] = scores(labels, probabilities.mean(1), classes)
    headline = "ten_crop" if ev.ten_crop else "centre_crop"
    best = probabilities.mean(1)
    predicted = best.argmax(1)
    result = {
        "view": headline,
        **{k: views[headline][k] for k in ("accuracy", "top1_error", "top5_error", "images")},
        **{name: {k: v for k, v in s.items() if k != "confusion"} for name, s in views.items()},
        "misclassified_count": int((predicted != labels).sum()),
        "misclassified": misclassified(val, labels, best, classes, ev.misclassified, workdir),
    }
    files.write_json(workdir / paths.EVAL, result)
    files.write_csv(workdir / paths.CONFUSION, pd.DataFrame(
        {"actual": [classes[i] for i in labels], "predicted": [classes[i] for i in predicted]}))
    plot_confusion(np.array(views[headline]["confusion"]), classes, workdir / paths.CONFUSION_PLOT)
    shown = np.linspace(0, len(val) - 1, min(ev.grid_images, len(val))).astype(int)  # across classes
    with shards.Reader() as reader:
        images = np.stack([pipeline.centre_crop(pipeline.decode(reader.read(*val[["shard", "offset", "size"]].iloc[i])),
                                                cfg.augment.crop_size).numpy() for i in shown])
    plot_predictions(images, labels[shown], predicted[shown], best[shown, predicted[shown]], classes,
                     workdir / paths.PREDICTIONS_PLOT)
    card = json.loads((workdir / paths.MODEL_CARD).read_text())
    files.write_json(workdir / paths.EVAL_CARD, {
        **card,
        "model_sha256": files.sha256_file(workdir / paths.MODEL),
        "evaluation": {k: v for k, v in result.items() if k != "misclassified"},
    })
    print(f"evaluate: validation accuracy {result['accuracy']:.1%} ({headline.replace('_', ' ')}) "
          f"on {result['images']} images")
    return {"step": STEP.name, "accuracy": result["accuracy"], "view": headline, "images": result["images"],
            "top1_error": result["top1_error"], "top5_error": result["top5_error"],
            "per_class": views[headline]["per_class"]}


evaluate_task = step_task(STEP, run)
