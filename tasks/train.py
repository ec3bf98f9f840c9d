"""train: fit AlexNet on the augmented training set, save models/alexnet.h5.

The saved model normalises its own input with the training set's statistics, so
it takes RGB pixels in [0, 255] and reloads with `keras.models.load_model` after
`import tasks.model`. A model card beside it records what it was trained on.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from tasks import files, model, paths, pipeline
from tasks.config import Config
from tasks.progress import Progress
from tasks.step import Step, Summary, step_task

STEP = Step(
    name="train",
    params=("base", "augment", "model", "train"),
    deps=(paths.AUGMENTED,),
    outs=(paths.MODEL, paths.MODEL_CARD, paths.LOGS, paths.HISTORY),
)


def optimizer(cfg: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    t = cfg.train
    rate = t.learning_rate
    if t.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=t.epochs * steps_per_epoch)
    if t.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=t.weight_decay or None)
    return keras.optimizers.SGD(rate, momentum=t.momentum, weight_decay=t.weight_decay or None)


class EpochProgress(keras.callbacks.Callback):
    """Epochs done, as a terminal bar and a Prefect progress artifact."""

    def __init__(self, epochs: int):
        super().__init__()
        self.progress = Progress("train", epochs, unit="epoch", bar=False)  # Keras draws its own bar

    def on_epoch_end(self, epoch, logs=None):
        self.progress.update(force=True)

    def on_train_end(self, logs=None):
        self.progress.__exit__()


def callbacks(cfg: Config, logs: Path) -> list[keras.callbacks.Callback]:
    found = [keras.callbacks.TensorBoard(log_dir=str(logs)), EpochProgress(cfg.train.epochs)]
    if cfg.train.schedule == "plateau":
        found.append(keras.callbacks.ReduceLROnPlateau(factor=0.1, patience=5, min_lr=1e-6, verbose=1))
    return found


def build_model(cfg: Config, classes: list[str], stats: dict, steps_per_epoch: int) -> keras.Model:
    net = model.build(
        len(classes),
        variant=cfg.model.variant,
        input_size=cfg.augment.crop_size,
        width=cfg.model.width,
        init=cfg.model.init,
        dropout=cfg.model.dropout,
        mean=stats["mean"],
        std=stats["std"],
    )
    net.compile(
        optimizer=optimizer(cfg, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return net


def save_model(net: keras.Model, target: Path) -> None:
    with files.atomic_path(target) as tmp:
        net.save(tmp)


def device_note() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return f"training on {len(gpus)} GPU(s)" if gpus else "training on CPU (no GPU visible)"


def run(cfg: Config, workdir: Path) -> Summary:
    """Train, then write models/alexnet.h5, its model card, history and TensorBoard logs."""
    index, stats = pipeline.read_prepared(workdir)
    classes = stats["classes"]
    train_index, val_index = index[index["subset"] == "train"], index[index["subset"] == "validation"]
    keras.utils.set_random_seed(cfg.base.seed)
    train_ds = pipeline.training_set(train_index, cfg.augment, stats, cfg.train.batch_size, cfg.base.seed)
    val_ds = pipeline.evaluation_set(val_index, cfg.augment, cfg.train.batch_size) if len(val_index) else None
    net = build_model(cfg, classes, stats, steps_per_epoch=-(-len(train_index) // cfg.train.batch_size))
    print(f"train: {device_note()}; {len(train_index)} training and {len(val_index)} validation images, "
          f"{net.count_params():,} parameters")

    logs = workdir / paths.LOGS
    shutil.rmtree(logs, ignore_errors=True)
    start = time.monotonic()
    history = net.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.train.epochs,
        callbacks=callbacks(cfg, logs),
        shuffle=False,  # the dataset shuffles itself, with the seed
        verbose=1 if sys.stdout.isatty() else 2,  # a bar in a terminal, a line per epoch in logs
    )
    seconds = time.monotonic() - start

    table = pd.DataFrame(history.history)
    table.insert(0, "epoch", range(1, len(table) + 1))
    files.write_csv(workdir / paths.HISTORY, table.round(6))
    save_model(net, workdir / paths.MODEL)
    final = {k: round(float(v[-1]), 6) for k, v in history.history.items()}
    card = {
        "classes": classes,
        "variant": cfg.model.variant,
        "input_size": cfg.augment.crop_size,
        "image_size": cfg.augment.image_size,
        "normalisation": {"mean": stats["mean"], "std": stats["std"]},
        "params": {name: cfg.section(name) for name in STEP.params},
        "data": {"index_sha256": files.sha256_file(workdir / paths.AUGMENT_INDEX), "train_images": len(train_index)},
        "final_epoch": final,
        "train_seconds": round(seconds, 1),
    }
    files.write_json(workdir / paths.MODEL_CARD, card)
    return {"step": STEP.name, "model": paths.MODEL, "epochs": cfg.train.epochs, "fit_seconds": round(seconds, 1), **final}


train_task = step_task(STEP, run)
