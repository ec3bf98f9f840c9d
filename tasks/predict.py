"""Classify image files with a saved model and its model card."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import keras
import numpy as np

from tasks import model, paths  # noqa: F401  (model registers the LRN layer)
from tasks.augment import canonical


def prepare(path: Path, image_size: int, input_size: int) -> np.ndarray:
    """The evaluation view of an image file: canonical square, centre crop, RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image OpenCV can read" if path.is_file() else "no such file")
    square = canonical(image, image_size)
    offset = (image_size - input_size) // 2
    crop = square[offset : offset + input_size, offset : offset + input_size]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32)


def classify(images: list[str], model_path: str = paths.MODEL, top: int = 1) -> list[dict]:
    """One result per image: its top classes and probabilities, or an error."""
    card = json.loads(Path(model_path).with_suffix(".json").read_text())
    net = keras.models.load_model(model_path, compile=False)
    results = []
    for name in images:
        try:
            x = prepare(Path(name), card["image_size"], card["input_size"])
        except ValueError as exc:
            results.append({"image": name, "error": str(exc)})
            continue
        probs = net.predict(x[None], verbose=0)[0]
        best = probs.argsort()[::-1][:top]
        results.append({"image": name, "top": [(card["classes"][i], float(probs[i])) for i in best]})
    return results
