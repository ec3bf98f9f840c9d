"""Does each `model.init` learn at full width? The paper's AlexNet on a photo-like set of 10 classes.

AlexNet as params-paper.yaml builds it (paper variant, width 1.0, 227x227 random crops
and flips of 256x256 images, dropout 0.5, the paper's SGD: rate 0.01, momentum 0.9,
weight decay 5e-4 inside the momentum), each init with its default normalisation
(`paper`, `caffe`: mean subtracted; `he`: standardised), side by side on the same
images, seed and batches. The images are generated scenes (the demo source's
backgrounds, clutter, lighting and noise), each class an object of its own shape
and colour family (as a class of photos has its shapes and colours), drawn at a
random size, place, angle and shade.

It prints, for each init: the activations layer by layer on a fixed batch before
training and after the first steps (how far each layer's output varies from image
to image, and how many ReLUs are dead: what tests/learning/test_inits.py bounds),
the spread of the logits, the training loss every `--every` steps against
ln(classes), and the validation accuracy (centre crops) at the end.

    python bench/inits.py [--steps 600] [--batch 64] [--per-class 100] [--inits paper caffe he]
    python bench/inits.py --quick     # a check that it runs: width 0.125, 20 steps
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tasks.acquire import demo_images  # noqa: E402
from tasks.learning import model  # noqa: E402

SIZE, CROP = 256, 227
SHAPES = ("disc", "ring", "triangle", "square", "star", "cross", "crescent", "arrow", "house", "tree")
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def _polygon(points, cx, cy, scale, angle) -> np.ndarray:
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (np.array(points, float) @ rotation.T * scale + (cx, cy)).astype(np.int32)


def _shade(cls: int, rng: np.random.Generator) -> tuple[float, ...]:
    """A BGR colour near the class's hue: hues 18 degrees (of OpenCV's 180) apart, random saturation and value."""
    hue = (cls * 180 // len(SHAPES) + rng.integers(-5, 6)) % 180
    hsv = np.array([[[hue, rng.integers(140, 256), rng.integers(110, 256)]]], np.uint8)
    return tuple(float(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _draw(img: np.ndarray, shape: str, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    scale = rng.uniform(0.18, 0.32) * min(h, w)
    cx, cy = rng.uniform(scale, w - scale), rng.uniform(scale, h - scale)
    angle = rng.uniform(-0.4, 0.4)
    colour = _shade(SHAPES.index(shape), rng)
    points = np.linspace(-math.pi / 2, 1.5 * math.pi, 10, endpoint=False)
    star = [(math.cos(a) * r, math.sin(a) * r) for a, r in zip(points, [1.0, 0.4] * 5)]
    polygons = {
        "triangle": [(0, -1), (0.9, 0.7), (-0.9, 0.7)],
        "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
        "star": star,
        "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                  (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
        "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
        "house": [(-0.7, 1), (-0.7, -0.1), (0, -0.9), (0.7, -0.1), (0.7, 1)],
        "tree": [(0, -1), (0.7, 0.2), (0.15, 0.2), (0.15, 1), (-0.15, 1), (-0.15, 0.2), (-0.7, 0.2)],
    }
    if shape in polygons:
        cv2.fillPoly(img, [_polygon(polygons[shape], cx, cy, scale, angle)], colour, cv2.LINE_AA)
    elif shape == "disc":
        cv2.circle(img, (int(cx), int(cy)), int(scale * 0.8), colour, -1, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(img, (int(cx), int(cy)), int(scale * 0.75), colour, max(2, int(scale * 0.2)), cv2.LINE_AA)
    else:  # crescent: a disc with a disc of the background's colour cut out of it
        cv2.circle(img, (int(cx), int(cy)), int(scale * 0.8), colour, -1, cv2.LINE_AA)
        cut = tuple(float(c) for c in img[int(cy), min(w - 1, int(cx + scale * 1.2))])
        cv2.circle(img, (int(cx + scale * 0.4), int(cy - scale * 0.2)), int(scale * 0.7), cut, -1, cv2.LINE_AA)


def scene(shape: str, index: int) -> np.ndarray:
    """A SIZE x SIZE RGB uint8 scene with one `shape` in it."""
    rng = np.random.default_rng([SHAPES.index(shape), index])
    img = demo_images._background(rng, SIZE, SIZE)
    demo_images._clutter(rng, img, int(rng.integers(2, 7)))
    _draw(img, shape, rng)
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30) + rng.normal(0, rng.uniform(0, 10), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)[..., ::-1].copy()


def data_set(classes: int, per_class: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([scene(SHAPES[c], offset + i) for c in range(classes) for i in range(per_class)])
    return images, np.repeat(np.arange(classes), per_class)


def crops(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random CROP x CROP crops, half of them flipped (the paper's augmentation without the colour shift)."""
    out = np.empty((len(images), CROP, CROP, 3), np.float32)
    for i, image in enumerate(images):
        top, left = rng.integers(0, SIZE - CROP + 1, 2)
        crop = image[top:top + CROP, left:left + CROP]
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def centre(images: np.ndarray) -> np.ndarray:
    m = (SIZE - CROP) // 2
    return images[:, m:m + CROP, m:m + CROP].astype(np.float32)


def logit_spread(net: keras.Model, batch: np.ndarray) -> dict[str, float]:
    """How the logits (log-probabilities, centred per image) vary from image to image and from class to class."""
    logp = np.log(np.clip(net.predict(batch, verbose=0, batch_size=16).astype(np.float64), 1e-30, None))
    logits = logp - logp.mean(axis=1, keepdims=True)
    return {"across_images": float(logits.std(axis=0).mean()), "across_classes": float(logits.std(axis=1).mean())}


def activations(net: keras.Model, batch: np.ndarray) -> list[str]:
    """Per layer: mean, spread across images (averaged over units) and the share of dead ReLUs."""
    probe = keras.Model(net.input, [net.get_layer(name).output for name in LAYERS])
    lines = []
    for name, out in zip(LAYERS, probe.predict(batch, verbose=0, batch_size=16)):
        flat = out.reshape(len(out), -1).astype(np.float64)
        dead = float((flat.max(axis=0) <= 0).mean())
        lines.append(f"{name}: mean {flat.mean():8.3f}  across images {flat.std(axis=0).mean():8.3f}  "
                     f"dead {dead:5.1%}")
    return lines


def build(init: str, classes: int, width: float, stats: dict) -> keras.Model:
    std = stats["std"] if init == "he" else None  # the normalisation `auto` picks for the init
    net = model.build(classes, variant="paper", input_size=CROP, width=width, init=init, dropout=0.5,
                      mean=stats["mean"], std=std)
    net.compile(optimizer=model.PaperSGD(learning_rate=0.01, momentum=0.9, l2=5e-4),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def run(init: str, args, train, val, stats) -> dict:
    keras.utils.set_random_seed(args.seed)
    net = build(init, args.classes, args.width, stats)
    probe = centre(train[0][:: max(1, len(train[0]) // 32)][:32])
    print(f"\n{init}: before training", flush=True)
    print("  logits: " + ", ".join(f"{k} {v:.3f}" for k, v in logit_spread(net, probe).items()))
    for line in activations(net, probe):
        print("  " + line)
    rng = np.random.default_rng(args.seed)
    losses, curve, start = [], [], time.monotonic()
    for step in range(1, args.steps + 1):
        pick = rng.integers(0, len(train[0]), args.batch)
        loss = float(net.train_on_batch(crops(train[0][pick], rng), train[1][pick])[0])
        losses.append(loss)
        if step in (1, 2, 5, 20):
            print(f"  after step {step}: loss {loss:.3f}; " + ", ".join(
                f"{k} {v:.3f}" for k, v in logit_spread(net, probe).items()), flush=True)
            if step == 20:
                for line in activations(net, probe):
                    print("    " + line)
        if step % args.every == 0 or step == args.steps:
            mean = float(np.mean(losses[-args.every:]))
            curve.append((step, mean))
            print(f"  steps {step - args.every + 1:>5}-{step:<5} loss {mean:.3f}  "
                  f"({time.monotonic() - start:.0f} s)", flush=True)
    accuracy = float(net.evaluate(centre(val[0]), val[1], verbose=0, batch_size=32)[1])
    return {"init": init, "curve": curve, "first": curve[0][1], "last": curve[-1][1], "accuracy": accuracy,
            "seconds": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inits", nargs="+", default=list(model.INITS))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="width 0.125, 20 steps of 8 images: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.width, args.steps, args.every, args.per_class, args.batch = 0.125, 20, 10, 6, 8
    train, val = data_set(args.classes, args.per_class), data_set(args.classes, max(2, args.per_class // 5), 10_000)
    pixels = train[0].reshape(-1, 3).astype(np.float64)
    stats = {"mean": pixels.mean(axis=0).tolist(), "std": pixels.std(axis=0).tolist()}
    print(f"AlexNet paper variant, width {args.width}, {CROP}x{CROP} crops of {SIZE}x{SIZE}; {args.classes} classes, "
          f"{len(train[0])} training and {len(val[0])} validation images; batch {args.batch}, {args.steps} steps; "
          f"SGD 0.01, momentum 0.9, weight decay 5e-4, dropout 0.5; keras {keras.__version__} "
          f"({keras.backend.backend()}); ln({args.classes}) = {math.log(args.classes):.3f}", flush=True)
    results = [run(init, args, train, val, stats) for init in args.inits]
    print(f"\n| init | loss, steps 1-{args.every} | loss, last {args.every} steps | "
          f"validation accuracy after {args.steps} steps |\n|---|---:|---:|---:|")
    for r in results:
        print(f"| `{r['init']}` | {r['first']:.2f} | {r['last']:.2f} | {r['accuracy']:.1%} |")
    print(f"(ln {args.classes} = {math.log(args.classes):.2f}; chance {1 / args.classes:.0%})")


if __name__ == "__main__":
    main()
