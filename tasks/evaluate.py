"""evaluate: score the saved model on the validation set, as the paper did.

Two views of each image: the centre crop, and the paper's ten crops (four corners
and the centre, each also flipped, softmax averaged). For each: accuracy, top-1
and top-5 error (top-5 only with more than five classes). For the headline view
(ten crops when `evaluate.ten_crop`): per-class precision, recall and F1 in their
own table, the confusion matrix (CSV for `dvc plots`, and a heatmap), the most
confused pairs of classes, the misclassified images, most confident first, and a
grid of validation images labelled with their predicted class: blue when right, red
when wrong. The model card gains the evaluation in models/alexnet.card.json.

Everything reads well at ImageNet's 1,000 classes: the headline figures stay short,
per-class figures go to a table, and memory grows with the predictions (images x
classes), not with pixels or plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from tasks import paths
from tasks.config import Config
from tasks.learning import model, pipeline  # noqa: F401  (model registers the custom layers)
from tasks.running.task import step_task
from tasks.step import Step, StepError, Summary
from tasks.storage import files, shards

STEP = Step(
    name="evaluate",
    params=("augment", "evaluate"),
    deps=(paths.AUGMENTED, paths.MODEL, paths.MODEL_CARD),
    outs=(paths.EVAL_CARD,),
    metrics=(paths.EVAL,),
    plots=(paths.CLASS_SCORES, paths.CONFUSION, paths.CONFUSION_PLOT, paths.PREDICTIONS_PLOT),
)
TOP_K = 5
CONFUSED_PAIRS = 10  # most confused pairs of classes in eval.json and on the heatmap
TEXT_CELLS = 20  # up to this many classes, the heatmap writes each cell's count


def top_k_error(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose true class is not among the k most probable."""
    best = np.argsort(-probabilities, axis=1)[:, :k]
    return float(1.0 - (best == labels[:, None]).any(axis=1).mean())


def scores(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, top-1/top-5 error, per-class precision, recall and F1 (a table), confusion matrix."""
    predicted = probabilities.argmax(1)
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    tp, predicted_n, actual_n = np.diag(confusion), confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted_n, out=np.zeros(len(classes)), where=predicted_n > 0)
    recall = np.divide(tp, actual_n, out=np.zeros(len(classes)), where=actual_n > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(classes)),
                   where=precision + recall > 0)
    per_class = pd.DataFrame({"class": classes, "precision": precision.round(4), "recall": recall.round(4),
                              "f1": f1.round(4), "support": actual_n})
    top5 = top_k_error(labels, probabilities, TOP_K) if len(classes) > TOP_K else None
    return {
        "accuracy": round(float((labels == predicted).mean()), 4),
        "top1_error": round(top_k_error(labels, probabilities, 1), 4),
        "top5_error": round(top5, 4) if top5 is not None else "n/a: 5 or fewer classes",
        "mean_f1": round(float(f1.mean()), 4),
        "images": int(len(labels)),
        "per_class": per_class,
        "confusion": confusion,
    }


def predict_views(net: keras.Model, views) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of the first view and the mean over the views, for batches of [B, V, s, s, 3]: two [N, classes].

    Only these two are kept, so memory grows with images x classes, not with views.
    """
    first, mean = [], []
    for batch in views:
        b, v = batch.shape[:2]
        out = net.predict_on_batch(np.reshape(batch.numpy(), (b * v, *batch.shape[2:]))).reshape(b, v, -1)
        first.append(out[:, 0])
        mean.append(out.mean(1))
    return np.concatenate(first), np.concatenate(mean)


def most_confused(confusion: np.ndarray, classes: list[str], names: dict[str, str], k: int) -> list[dict]:
    """The k largest off-diagonal cells: (actual, predicted, images), most first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    cells = np.argsort(-off, axis=None, kind="stable")[:k]
    return [{"actual": names[classes[i]], "predicted": names[classes[j]], "images": int(off[i, j])}
            for i, j in zip(*np.unravel_index(cells, off.shape)) if off[i, j]]


def misclassified(val: pd.DataFrame, labels, probabilities, classes, limit: int, workdir: Path) -> list[dict]:
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:limit]
    return [{"image": val["member"].iloc[i], "shard": Path(val["shard"].iloc[i]).relative_to(workdir).as_posix(),
             "actual": classes[labels[i]], "predicted": classes[predicted[i]],
             "probability": round(float(probabilities[i, predicted[i]]), 4)}
            for i in wrong]


def short_name(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: np.ndarray, classes: list[str], names: dict[str, str], confused: list[dict],
                   target: Path) -> None:
    """The confusion matrix as a heatmap of each actual class's share, at a size that does not grow with the
    classes: with a few classes every cell has its count and every class its label; with many, neither (a
    thousand classes make a million cells), and the most confused pairs are listed beside it."""
    plt = _figure()
    n, few = len(classes), len(classes) <= TEXT_CELLS
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(min(1.2 * n + 2, 12), min(1.2 * n + 1.5, 11)) if few else (15, 10))
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest" if few else "antialiased")
    if few:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.6 else "black")
        labels = [short_name(names[c]) for c in classes]
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
    else:
        ax.set_title(f"{n} classes, in label order; each row is an actual class's share", fontsize=10)
        fig.colorbar(shown, ax=ax, fraction=0.04, label="share of the actual class")
        pairs = "\n".join(f"{p['images']:>5}  {short_name(p['actual'])} -> {short_name(p['predicted'])}"
                          for p in confused)
        fig.text(0.66, 0.5, f"most confused (images, actual -> predicted)\n\n{pairs}", family="monospace",
                 fontsize=9, va="center")
        fig.subplots_adjust(right=0.62)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if few:
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
    """Write metrics/eval.json and its per-class table, the confusion and prediction plots and the evaluated card."""
    index, stats = pipeline.read_prepared(workdir)
    classes = stats["classes"]
    val = index[index["subset"] == "validation"].reset_index(drop=True)
    if val.empty:
        raise StepError("no validation images: raise split.validation_fraction or download more images")
    for required in (paths.MODEL, paths.MODEL_CARD):
        if not (workdir / required).is_file():
            raise StepError(f"missing {workdir / required}: run the train step first")
    card = json.loads((workdir / paths.MODEL_CARD).read_text())
    names = dict(zip(classes, card.get("class_names", classes)))
    net = keras.models.load_model(workdir / paths.MODEL, compile=False)
    ev = cfg.evaluate
    centre, mean = predict_views(net, pipeline.eval_views(val, cfg.augment, ev.batch_size, ten=ev.ten_crop))
    labels = val["label"].to_numpy()
    views = {"centre_crop": scores(labels, centre, classes)}
    if ev.ten_crop:
        views["ten_crop"] = scores(labels, mean, classes)
    headline = "ten_crop" if ev.ten_crop else "centre_crop"
    best, main = (mean if ev.ten_crop else centre), views[headline]
    predicted = best.argmax(1)
    confused = most_confused(main["confusion"], classes, names, CONFUSED_PAIRS)
    per_class = main["per_class"].assign(name=[names[c] for c in classes]).sort_values(["recall", "class"])
    result = {
        "view": headline,
        **{k: main[k] for k in ("accuracy", "top1_error", "top5_error", "mean_f1", "images")},
        "classes": len(classes),
        **{name: {k: v for k, v in s.items() if k not in ("per_class", "confusion")} for name, s in views.items()},
        "misclassified_count": int((predicted != labels).sum()),
        "most_confused": confused,
        "misclassified": misclassified(val, labels, best, classes, ev.misclassified, workdir),
    }
    files.write_json(workdir / paths.EVAL, result, sort_keys=False)
    files.write_csv(workdir / paths.CLASS_SCORES, per_class)
    files.write_csv(workdir / paths.CONFUSION, pd.DataFrame(
        {"actual": [classes[i] for i in labels], "predicted": [classes[i] for i in predicted]}))
    plot_confusion(main["confusion"], classes, names, confused, workdir / paths.CONFUSION_PLOT)
    shown = np.linspace(0, len(val) - 1, min(ev.grid_images, len(val))).astype(int)  # across classes
    with shards.Reader() as reader:
        images = np.stack([pipeline.centre_crop(pipeline.decode(reader.read(*val[["shard", "offset", "size"]].iloc[i])),
                                                cfg.augment.crop_size).numpy() for i in shown])
    plot_predictions(images, labels[shown], predicted[shown], best[shown, predicted[shown]],
                     [short_name(names[c]) for c in classes], workdir / paths.PREDICTIONS_PLOT)
    files.write_json(workdir / paths.EVAL_CARD, {
        **card,
        "model_sha256": files.sha256_file(workdir / paths.MODEL),
        "evaluation": {k: v for k, v in result.items() if k != "misclassified"},
    })
    weakest = per_class.head(5)
    print(f"evaluate: validation accuracy {result['accuracy']:.1%} ({headline.replace('_', ' ')}) on "
          f"{result['images']} images in {len(classes)} classes, mean F1 {result['mean_f1']:.3f}; weakest recall: "
          + ", ".join(f"{n} {r:.0%}" for n, r in zip(weakest["name"], weakest["recall"]))
          + f" (all classes: {paths.CLASS_SCORES})")
    return {"step": STEP.name, "accuracy": result["accuracy"], "view": headline, "images": result["images"],
            "top1_error": result["top1_error"], "top5_error": result["top5_error"], "mean_f1": result["mean_f1"],
            "weakest": {n: r for n, r in zip(weakest["name"], weakest["recall"].astype(float))}}


evaluate_task = step_task(STEP, run)
