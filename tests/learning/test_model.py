"""The AlexNet model: the paper's architecture, its LRN, initialisations and update rule."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO
from tasks.learning import model


def test_paper_model_has_the_papers_parameter_count():
    assert model.build(1000, variant="paper").count_params() == 60_965_224


def test_seed_model_has_the_tutorials_parameter_count():
    net = model.build(2, variant="seed")
    assert net.count_params() == 62_380_346
    names = [layer.name for layer in net.layers]
    assert not any(isinstance(layer, (model.LocalResponseNorm, keras.layers.Dropout)) for layer in net.layers)
    assert names[-4:] == ["fc6", "fc7", "fc8", "predictions"]
    assert net.get_layer("fc8").activation is keras.activations.relu


def test_paper_layers_follow_the_paper():
    net = model.build(1000)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in net.layers}
    assert shapes["conv1"] == (55, 55, 96) and shapes["pool1"] == (27, 27, 96)
    assert shapes["conv2"] == (27, 27, 256) and shapes["pool2"] == (13, 13, 256)
    assert shapes["conv5"] == (13, 13, 256) and shapes["pool5"] == (6, 6, 256)
    assert [net.get_layer(n).rate for n in ("drop6", "drop7")] == [0.5, 0.5]
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert net.get_layer(name).activation is keras.activations.relu, name
    assert [type(layer).__name__ for layer in net.layers].count("LocalResponseNorm") == 2


def test_grouped_convolutions_are_conv2_conv4_conv5():
    net = model.build(1000)
    groups = {name: net.get_layer(name).groups for name in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    # Each group sees half the input channels: the two-GPU split.
    assert net.get_layer("conv2").kernel.shape == (5, 5, 48, 256)
    assert net.get_layer("conv3").kernel.shape == (3, 3, 256, 384)
    assert net.get_layer("conv4").kernel.shape == (3, 3, 192, 384)


def test_grouped_conv_computes_what_keras_grouped_conv_computes():
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 6)).astype("float32")
    ours, reference = model.GroupedConv2D(8, 3, groups=2, padding="same"), keras.layers.Conv2D(8, 3, groups=2,
                                                                                                 padding="same")
    ours.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def lrn_reference(a: np.ndarray, n=5, k=2.0, alpha=1e-4, beta=0.75) -> np.ndarray:
    """The paper's formula, channel by channel: b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta."""
    channels = a.shape[-1]
    out = np.empty_like(a, dtype=np.float64)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        out[..., i] = a[..., i] / (k + alpha * (a[..., lo : hi + 1].astype(np.float64) ** 2).sum(-1)) ** beta
    return out


def test_lrn_matches_the_papers_formula():
    # Values up to 100 make the sum term as large as k, so the normalisation is exercised.
    a = np.random.default_rng(1).uniform(0, 100, (2, 4, 5, 11)).astype("float32")
    np.testing.assert_allclose(model.LocalResponseNorm()(a), lrn_reference(a), rtol=1e-5)
    small = model.LocalResponseNorm(depth=3, k=1.0, alpha=1e-3, beta=0.5)(a)
    np.testing.assert_allclose(small, lrn_reference(a, n=3, k=1.0, alpha=1e-3, beta=0.5), rtol=1e-5)


def test_lrn_is_serialisable_and_safe_in_float16():
    layer = model.LocalResponseNorm(depth=3, alpha=2e-4, name="lrn")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert (type(clone), clone.depth, clone.alpha, clone.name) == (model.LocalResponseNorm, 3, 2e-4, "lrn")
    big = np.full((1, 2, 2, 8), 300.0, np.float16)  # 300^2 overflows float16
    out = keras.ops.convert_to_numpy(model.LocalResponseNorm(dtype="mixed_float16")(big))
    assert out.dtype == np.float16 and np.isfinite(out).all()
    np.testing.assert_allclose(out.astype(np.float64), lrn_reference(big.astype(np.float64)), rtol=2e-3)


@pytest.mark.parametrize("init, one", [("paper", 1.0), ("caffe", 0.1)])
def test_paper_and_caffe_initialisations(init, one):
    net = model.build(10, init=init, width=0.5)
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert np.all(net.get_layer(name).bias.numpy() == one), name
    for name in ("conv1", "conv3", "predictions"):
        assert np.all(net.get_layer(name).bias.numpy() == 0), name
    std = {name: net.get_layer(name).kernel.numpy().std() for name in ("conv3", "fc6")}
    assert std["conv3"] == pytest.approx(0.01, rel=0.05)
    assert std["fc6"] == pytest.approx(0.005 if init == "caffe" else 0.01, rel=0.05)


def test_he_initialisation():
    net = model.build(10, init="he", width=0.5)
    conv3 = net.get_layer("conv3").kernel.numpy()
    fan_in = np.prod(conv3.shape[:3])
    assert conv3.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.1)  # truncated normal: a bit under
    assert all(np.all(net.get_layer(n).bias.numpy() == 0) for n in ("conv2", "fc6"))


def test_width_scales_every_layer_keeping_groups_whole():
    net = model.build(10, width=0.25)
    filters = [net.get_layer(n).filters for n in ("conv1", "conv2", "conv3", "conv4", "conv5")]
    assert filters == [24, 64, 96, 96, 64]
    assert net.get_layer("fc6").units == 1024 and all(f % 2 == 0 for f in filters)


def test_normalisation_layer_takes_pixels_in_0_255():
    net = model.build(2, width=0.125, input_size=67, mean=[100.0, 110.0, 120.0], std=[50.0, 50.0, 50.0])
    norm = keras.Model(net.input, net.get_layer("normalize").output)
    out = norm.predict(np.full((1, 67, 67, 3), [150.0, 110.0, 20.0], np.float32), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.0, -2.0], atol=1e-5)


def test_paper_sgd_applies_weight_decay_inside_the_momentum_update():
    """v <- 0.9 v - 0.0005 e w - e dL/dw; w <- w + v, checked by hand over three steps."""
    lr, momentum, l2 = 0.1, 0.9, 0.05  # a large l2 makes the decay term visible
    w0, grad = np.array([1.0, -2.0], np.float32), np.array([0.5, 0.25], np.float32)
    variable = keras.Variable(w0)
    opt = model.PaperSGD(lr, momentum=momentum, l2=l2)
    w, v = w0.astype(np.float64), np.zeros(2)
    for _ in range(3):
        opt.apply_gradients([(keras.ops.convert_to_tensor(grad), variable)])
        v = momentum * v - l2 * lr * w - lr * grad
        w = w + v
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-6)
    # Keras's own (decoupled) weight decay is a different rule, so the check above can tell them apart.
    other = keras.Variable(w0)
    keras_sgd = keras.optimizers.SGD(lr, momentum=momentum, weight_decay=l2)
    for _ in range(3):
        keras_sgd.apply_gradients([(keras.ops.convert_to_tensor(grad), other)])
    assert np.abs(other.numpy() - w).max() > 1e-3


def test_paper_sgd_round_trips_its_config():
    opt = model.PaperSGD(0.02, momentum=0.8, l2=1e-3)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, model.PaperSGD) and (clone.l2, clone.momentum) == (1e-3, 0.8)


def test_model_code_imports_keras_and_numpy_only():
    """Backend-agnostic: the model module never imports TensorFlow (or any other backend) directly."""
    tree = ast.parse((REPO / "tasks" / "learning" / "model.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"__future__", "keras", "numpy"}


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed (pip install -e '.[jax]')")
def test_model_builds_and_trains_under_the_jax_backend():
    script = (
        "import numpy as np, keras\n"
        "from tasks.learning import model\n"
        "assert keras.backend.backend() == 'jax'\n"
        "net = model.build(3, width=0.125, input_size=67, mean=[128.0] * 3)\n"
        "net.compile(model.PaperSGD(0.01), keras.losses.SparseCategoricalCrossentropy())\n"
        "x = np.random.default_rng(0).uniform(0, 255, (8, 67, 67, 3)).astype('float32')\n"
        "loss = net.fit(x, np.arange(8) % 3, epochs=2, verbose=0).history['loss']\n"
        "assert np.isfinite(loss).all(), loss\n"
        "print('ok', net.count_params())\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")


def test_a_model_saved_by_an_earlier_release_loads_and_predicts_as_it_did():
    """tests/data/alexnet-saved-by-0.1.h5: saved when the model lived in tasks/model.py (paper variant, its
    custom layers, width 0.0625, 3 classes); `import tasks.learning.model` must be all it takes to load it."""
    net = keras.models.load_model(REPO / "tests" / "data" / "alexnet-saved-by-0.1.h5")
    assert {"LocalResponseNorm", "GroupedConv2D"} <= {type(layer).__name__ for layer in net.layers}
    x = np.random.default_rng(0).uniform(0, 255, (2, 67, 67, 3)).astype("float32")
    recorded = [[0.169045, 0.682569, 0.148386], [0.197271, 0.600030, 0.202699]]
    np.testing.assert_allclose(net.predict(x, verbose=0), recorded, atol=2e-5)
