"""Classify image files with a saved model and its model card (`alexnet predict`)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from tasks import paths
from tasks.errors import StepError
from tasks.learning import model, pipeline  # noqa: F401  (model registers the custom layers)
from tasks.storage.canonical import canonical


def views(path: Path, image_size: int, input_size: int, ten_crop: bool) -> np.ndarray:
    """The evaluation views of an image file: canonical square, then the centre crop or ten crops."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image OpenCV can read" if path.is_file() else "no such file")
    square = tf.constant(cv2.cvtColor(canonical(image, image_size), cv2.COLOR_BGR2RGB))
    crops = pipeline.ten_crops(square, input_size) if ten_crop else pipeline.centre_crop(square, input_size)[None]
    return crops.numpy().astype(np.float32)


def classify(images: list[str], model_path: str = paths.MODEL, top: int = 1, ten_crop: bool = False) -> list[dict]:
    """One result per image: its `top` classes with probabilities, or an error."""
    try:
        card = json.loads(Path(model_path).with_suffix(".json").read_text())
        net = keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError) as exc:  # h5py and json say what is wrong with the file; not a retry's matter
        raise StepError(f"cannot read the model {model_path} or its card: {exc}; train it again "
                        "(`alexnet run` or `dvc repro`) or restore it (`dvc checkout train`)") from None
    classes = card.get("class_names", card["classes"])
    results = []
    for name in images:
        try:
            x = views(Path(name), card["image_size"], card["input_size"], ten_crop)
        except ValueError as exc:
            results.append({"image": name, "error": str(exc)})
            continue
        probs = net.predict_on_batch(x).mean(0)
        best = np.argsort(-probs, kind="stable")[: max(1, top)]
        results.append({"image": name, "top": [(classes[i], float(probs[i])) for i in best]})
    return results


def table(result: dict) -> str:
    """An image's classes and probabilities, most probable first."""
    width = max(len("class"), *(len(c) for c, _ in result["top"]))
    lines = [result["image"], f"  rank  {'class':<{width}}  probability"]
    lines += [f"  {rank:>4}  {c:<{width}}  {p:>11.1%}" for rank, (c, p) in enumerate(result["top"], 1)]
    return "\n".join(lines)
