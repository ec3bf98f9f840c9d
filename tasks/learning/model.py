"""AlexNet in Keras 3, written with `keras.layers` and `keras.ops` only.

`paper`: Krizhevsky, Sutskever and Hinton (NIPS 2012), with local response
normalisation and the two-GPU split kept as grouped convolutions (conv2, conv4,
conv5). `seed`: the simplified Keras variant of the tutorial this project grew
from. `width` scales every layer for CPU-sized runs (1.0 is the paper). No
TensorFlow import here, so the model also builds and trains under other Keras
backends (KERAS_BACKEND=jax), and so does the paper's SGD update (`PaperSGD`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

VARIANTS = ("paper", "seed")
INITS = ("paper", "caffe", "he")


@keras.saving.register_keras_serializable(package="alexnet")
class LocalResponseNorm(layers.Layer):
    """Across-channel LRN: b = a / (k + alpha * sum_{n neighbours} a^2) ** beta."""

    def __init__(self, depth: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth, self.k, self.alpha, self.beta = depth, k, alpha, beta

    def call(self, x):
        # Neighbour sums as one matmul with a banded 0/1 matrix, and the power as
        # exp(-beta * log(.)): both measured several times faster than summing
        # shifted slices and `ops.power` (docs/benchmarks.md). Computed in float32,
        # since squared activations overflow float16.
        i = np.arange(x.shape[-1])
        band = (np.abs(i[:, None] - i[None, :]) <= self.depth // 2).astype("float32")
        a = ops.cast(x, "float32")
        window = ops.matmul(ops.square(a), band)
        return ops.cast(a * ops.exp(-self.beta * ops.log(self.k + self.alpha * window)), x.dtype)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "k": self.k, "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="alexnet")
class GroupedConv2D(layers.Conv2D):
    """`Conv2D(groups=g)` computed as g convolutions over channel slices.

    Same weights and results as Keras's grouped convolution, but TensorFlow's CPU
    kernel for grouped convolutions is several times slower than separate ones
    (docs/benchmarks.md); on GPUs the difference is small.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        parts = zip(ops.split(inputs, self.groups, axis=-1), ops.split(kernel, self.groups, axis=-1))
        return ops.concatenate([super(GroupedConv2D, self).convolution_op(x, k) for x, k in parts], axis=-1)


@keras.saving.register_keras_serializable(package="alexnet")
class PaperSGD(keras.optimizers.SGD):
    """SGD with momentum and the paper's weight decay, inside the momentum update:

        v <- momentum * v - lr * (l2 * w + dL/dw);   w <- w + v

    (Krizhevsky et al. 2012, section 5, with lr = epsilon and l2 = 0.0005). Keras's
    `weight_decay` is decoupled from the momentum, which is not this rule.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=5e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            decay = ops.multiply(ops.cast(self.l2, variable.dtype), variable)
            gradient = ops.add(ops.cast(gradient, variable.dtype), decay)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def _scaled(filters: int, width: float, groups: int = 2) -> int:
    """Scaled width, kept a multiple of the group count."""
    return max(groups, round(filters * width / groups) * groups)


def _inits(init: str, bias: bool, std: float = 0.01) -> dict:
    """Initialisers of one layer; `bias` marks the layers the paper starts with biases of 1."""
    if init == "he":
        return {"kernel_initializer": "he_normal", "bias_initializer": "zeros"}
    # paper: N(0, 0.01), biases 1 in conv2, conv4, conv5 and the hidden FC layers so
    # their ReLUs start active. caffe (the Caffe replica): biases 0.1 there, since 1
    # gave a flat loss, and N(0, 0.005) in fc6 and fc7.
    one = 1.0 if init == "paper" else 0.1
    return {
        "kernel_initializer": keras.initializers.RandomNormal(stddev=std if init == "caffe" else 0.01),
        "bias_initializer": keras.initializers.Constant(one if bias else 0.0),
    }


def _paper_body(x, width: float, init: str, dropout: float):
    w = lambda n: _scaled(n, width)  # noqa: E731
    conv = lambda n, k, name, bias, **kw: GroupedConv2D(  # noqa: E731
        w(n), k, activation="relu", name=name, **kw, **_inits(init, bias))
    x = conv(96, 11, "conv1", False, strides=4)(x)
    x = LocalResponseNorm(name="lrn1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = conv(256, 5, "conv2", True, padding="same", groups=2)(x)
    x = LocalResponseNorm(name="lrn2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = conv(384, 3, "conv3", False, padding="same")(x)
    x = conv(384, 3, "conv4", True, padding="same", groups=2)(x)
    x = conv(256, 3, "conv5", True, padding="same", groups=2)(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(w(4096), activation="relu", name="fc6", **_inits(init, True, std=0.005))(x)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Dense(w(4096), activation="relu", name="fc7", **_inits(init, True, std=0.005))(x)
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
    """AlexNet over RGB images in [0, 255]; with `mean` (and `std`) the model normalises its input.

    `init` applies to the paper variant; the seed variant is He-initialised, as in the
    tutorial. Under a mixed-precision policy the softmax still runs in float32.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    if mean is not None:
        x = layers.Normalization(mean=mean, variance=[s * s for s in (std or [1.0] * 3)], name="normalize")(x)
    if variant == "paper":
        x, head_init = _paper_body(x, width, init, dropout)
    else:
        x, head_init = _seed_body(x, width)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions", **head_init)(x)
    return keras.Model(inputs, outputs, name=f"alexnet_{variant}")
