"""AlexNet in Keras 3, written with `keras.layers` and `keras.ops` only.

`paper`: Krizhevsky, Sutskever and Hinton (NIPS 2012), with local response
normalisation and the two-GPU split kept as grouped convolutions (conv2, conv4,
conv5). `seed`: the simplified Keras variant of the tutorial this project grew
from. `width` scales every layer for CPU-sized runs (1.0 is the paper).
"""

from __future__ import annotations

import keras
from keras import layers, ops

VARIANTS = ("paper", "seed")
INITS = ("paper", "he")


@keras.saving.register_keras_serializable(package="alexnet")
class LocalResponseNorm(layers.Layer):
    """Across-channel LRN: b = a / (k + alpha * sum_{n neighbours} a^2) ** beta."""

    def __init__(self, depth: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth, self.k, self.alpha, self.beta = depth, k, alpha, beta

    def call(self, x):
        half = self.depth // 2
        squared = ops.pad(ops.square(x), [[0, 0], [0, 0], [0, 0], [half, half]])
        channels = ops.shape(x)[-1]
        window = sum(squared[..., i : i + channels] for i in range(self.depth))
        return x / ops.power(self.k + self.alpha * window, self.beta)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "k": self.k, "alpha": self.alpha, "beta": self.beta}


def _scaled(filters: int, width: float, groups: int = 2) -> int:
    """Scaled width, kept a multiple of the group count."""
    return max(groups, round(filters * width / groups) * groups)


def _inits(init: str, bias_one: bool) -> dict:
    if init == "paper":  # N(0, 0.01); biases 1 where the paper set them, so ReLUs start active
        return {
            "kernel_initializer": keras.initializers.RandomNormal(stddev=0.01),
            "bias_initializer": "ones" if bias_one else "zeros",
        }
    return {"kernel_initializer": "he_normal", "bias_initializer": "zeros"}


def _paper_body(x, width: float, init: str, dropout: float):
    w = lambda n: _scaled(n, width)  # noqa: E731
    x = layers.Conv2D(w(96), 11, strides=4, activation="relu", name="conv1", **_inits(init, False))(x)
    x = LocalResponseNorm(name="lrn1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(w(256), 5, padding="same", groups=2, activation="relu", name="conv2", **_inits(init, True))(x)
    x = LocalResponseNorm(name="lrn2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(w(384), 3, padding="same", activation="relu", name="conv3", **_inits(init, False))(x)
    x = layers.Conv2D(w(384), 3, padding="same", groups=2, activation="relu", name="conv4", **_inits(init, True))(x)
    x = layers.Conv2D(w(256), 3, padding="same", groups=2, activation="relu", name="conv5", **_inits(init, True))(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(w(4096), activation="relu", name="fc6", **_inits(init, True))(x)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Dense(w(4096), activation="relu", name="fc7", **_inits(init, True))(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    return x, _inits(init, False)


def _seed_body(x, width: float):
    w = lambda n: _scaled(n, width)  # noqa: E731
    he = {"kernel_initializer": "he_normal"}
    x = layers.Conv2D(w(96), 11, strides=4, activation="relu", name="conv1", **he)(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(w(256), 5, padding="same", activation="relu", name="conv2", **he)(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(w(384), 3, padding="same", activation="relu", name="conv3", **he)(x)
    x = layers.Conv2D(w(384), 3, padding="same", activation="relu", name="conv4", **he)(x)
    x = layers.Conv2D(w(256), 3, padding="same", activation="relu", name="conv5", **he)(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(w(4096), activation="relu", name="fc6")(x)
    x = layers.Dense(w(4096), activation="relu", name="fc7")(x)
    x = layers.Dense(w(1000), activation="relu", name="fc8")(x)
    return x, {}


def build(
    num_classes: int,
    *,
    variant: str = "paper",
    input_size: int = 227,
    width: float = 1.0,
    init: str = "he",
    dropout: float = 0.5,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> keras.Model:
    """AlexNet over RGB images in [0, 255]; with `mean`/`std` the model normalises its input."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    if mean is not None:
        x = layers.Normalization(mean=mean, variance=[s * s for s in (std or [1.0] * 3)], name="normalize")(x)
    if variant == "paper":
        x, head_init = _paper_body(x, width, init, dropout)
    else:
        x, head_init = _seed_body(x, width)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions", **head_init)(x)
    return keras.Model(inputs, outputs, name=f"alexnet_{variant}")
