"""train: fit AlexNet on the augmented training set, save models/alexnet.h5.

The saved model normalises its own input, so it takes RGB pixels in [0, 255] and
reloads with `keras.models.load_model` after `import tasks.learning.model`. A model card
beside it records what it was trained on. Training runs on every visible GPU
(MirroredStrategy), with mixed precision and XLA where they pay, and checkpoints
every epoch: a run killed at any point and started again resumes from its last
checkpoint and ends with the weights, history and metrics of an uninterrupted run
(on a CPU, bit for bit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import h5py
import keras
import pandas as pd
import tensorflow as tf

from tasks import paths
from tasks.config import Config
from tasks.learning import model, pipeline
from tasks.running.progress import Progress
from tasks.running.task import step_task
from tasks.step import Step, StepError, Summary
from tasks.storage import files

STEP = Step(
    name="train",
    params=("base", "augment", "model", "train"),
    deps=(paths.AUGMENTED,),
    outs=(paths.MODEL, paths.MODEL_CARD, paths.LOGS, paths.HISTORY),
)
# Outside every declared output, so neither DVC nor the Prefect cache check touches it.
CHECKPOINTS = Path(paths.STATE) / "checkpoints"
PRECISION = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def optimizer(cfg: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    t = cfg.train
    rate = t.learning_rate
    if t.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=t.epochs * steps_per_epoch)
    if t.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=t.weight_decay or None)
    return model.PaperSGD(rate, momentum=t.momentum, l2=t.weight_decay)


def strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs, or over logical CPU devices when there are several; else the default."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def precision_policy(setting: str) -> str:
    """The Keras dtype policy for `train.mixed_precision`."""
    if setting != "auto":
        return PRECISION[setting]
    gpus = tf.config.list_physical_devices("GPU")
    capable = gpus and all(
        tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) >= (7, 0) for g in gpus)
    return "mixed_float16" if capable else "float32"


def device_note(replicas: int, policy: str) -> str:
    gpus = tf.config.list_logical_devices("GPU")
    where = f"{len(gpus)} GPU(s)" if gpus else "CPU (no GPU visible)"
    spread = f", MirroredStrategy over {replicas} devices" if replicas > 1 else ""
    return f"training on {where}{spread}, precision {policy}"


class EpochProgress(keras.callbacks.Callback):
    """Epochs done, as a terminal bar and a Prefect progress artifact."""

    def __init__(self, epochs: int, done: int):
        super().__init__()
        self.progress = Progress("train", epochs, unit="epoch", bar=False)  # Keras draws its own bar
        if done:
            self.progress.update(done, force=True)

    def on_epoch_end(self, epoch, logs=None):
        self.progress.update(force=True)

    def on_train_end(self, logs=None):
        self.progress.__exit__()


def training_state(trainer: keras.Model) -> list:
    """Every variable the next training step depends on: the weights, the optimizer's (step count, momentum,
    learning rate, loss scale) and the random generators' (dropout's). Keras's weights files leave the last
    out, and a run resumed without them drops other units than the uninterrupted one."""
    return [*trainer.variables, *trainer.optimizer.variables]


# What the learning-rate and early-stopping rules remember from epoch to epoch (Keras resets it as fit begins).
MEMORY = {"ReduceLROnPlateau": ("best", "wait", "cooldown_counter"),
          "EarlyStopping": ("best", "best_epoch", "wait", "stopped_epoch")}


class Checkpoint(keras.callbacks.Callback):
    """After every epoch: the whole training state, and the history so far.

    The state is every variable (`training_state`) and the memory of the rules
    (`MEMORY`); the batches are a function of the seed and the epoch. So a run
    resumed from a checkpoint goes on exactly as the uninterrupted one would have.
    Each write is atomic and the state file names its variables file, so a kill at
    any moment leaves the previous epoch's checkpoint or this one, never a mix.
    """

    def __init__(self, folder: Path | None):
        super().__init__()
        self.folder, self.history = folder, []
        self.rules: list[keras.callbacks.Callback] = []  # the callbacks whose MEMORY is part of the state
        self.remembered: dict = {}
        self.stopped = False  # early stopping had ended the training

    def restore(self, trainer: keras.Model) -> int:
        """Epochs done: the last checkpoint loaded into `trainer` and this callback (0 if there is none)."""
        state_path = self.folder / "state.json" if self.folder else None
        if not (state_path and state_path.is_file()):
            return 0
        state = json.loads(state_path.read_text())
        trainer.optimizer.build(trainer.trainable_variables)
        variables = training_state(trainer)
        with h5py.File(self.folder / state["variables"], "r") as saved:
            if [saved[str(i)].shape for i in range(len(saved))] != [tuple(v.shape) for v in variables]:
                raise StepError(f"the checkpoint in {self.folder} does not fit this model; delete it to start over")
            for i, variable in enumerate(variables):
                variable.assign(saved[str(i)][()])
        self.history, self.remembered, self.stopped = state["history"], state["memory"], state["stopped"]
        return state["epoch"]

    def on_train_begin(self, logs=None):
        # After the rules' own on_train_begin (this callback comes last), which forgets what they remembered.
        for rule in self.rules:
            for name, value in self.remembered.get(type(rule).__name__, {}).items():
                setattr(rule, name, value)

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({"epoch": epoch + 1, **{k: round(float(v), 6) for k, v in (logs or {}).items()}})
        if self.folder is None:
            return
        name = f"epoch-{epoch + 1}.h5"
        with files.atomic_path(self.folder / name) as tmp, h5py.File(tmp, "w") as out:
            for i, variable in enumerate(training_state(self.model)):  # one array in host memory at a time
                out[str(i)] = variable.numpy()
        memory = {type(rule).__name__: {k: _plain(getattr(rule, k)) for k in MEMORY[type(rule).__name__]}
                  for rule in self.rules}
        files.write_json(self.folder / "state.json", {"epoch": epoch + 1, "variables": name, "history": self.history,
                                                     "memory": memory, "stopped": bool(self.model.stop_training)})
        for old in self.folder.glob("epoch-*.h5"):
            if old.name != name:
                old.unlink()


def _plain(value):
    """A rule's remembered number as JSON takes it (Keras keeps some as NumPy scalars)."""
    return value.item() if hasattr(value, "item") else value


def resume_folder(cfg: Config, workdir: Path) -> Path:
    """The checkpoint folder of this exact training: its params, data index and code."""
    material = {
        "params": {name: cfg.section(name) for name in STEP.params},
        "data": {p: files.sha256_file(workdir / p) for p in (paths.AUGMENT_INDEX, paths.STATS)},
        "code": {p.name: files.sha256_file(p) for p in STEP.code_files()},
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
    return workdir / CHECKPOINTS / key


def callbacks(cfg: Config, logs: Path, checkpoint: Checkpoint, done: int, validate: bool) -> list:
    monitor = "val_accuracy" if validate else "accuracy"  # the paper watches the validation error
    found = [keras.callbacks.TerminateOnNaN(), keras.callbacks.TensorBoard(log_dir=str(logs)),
             EpochProgress(cfg.train.epochs, done)]
    if cfg.train.schedule == "plateau":
        found.append(keras.callbacks.ReduceLROnPlateau(monitor, mode="max", factor=0.1, patience=cfg.train.patience,
                                                       min_lr=1e-6, verbose=1))
    if cfg.train.early_stopping:
        found.append(keras.callbacks.EarlyStopping(monitor, mode="max", patience=cfg.train.early_stopping, verbose=1))
    # Last, so the checkpoint holds the rate the plateau rule has just set, and restores what the rules
    # remember after they reset it.
    checkpoint.rules = [c for c in found if type(c).__name__ in MEMORY]
    return [*found, checkpoint]


def build_model(cfg: Config, classes: list[str], stats: dict) -> keras.Model:
    """AlexNet for these params and classes, normalising its own [0, 255] input."""
    norm = pipeline.normalisation(cfg.augment, stats, cfg.model.init) or {}
    return model.build(
        len(classes),
        variant=cfg.model.variant,
        input_size=cfg.augment.crop_size,
        width=cfg.model.width,
        init=cfg.model.init,
        dropout=cfg.model.dropout,
        mean=norm.get("mean"),
        std=norm.get("std"),
    )


def compile_model(net: keras.Model, cfg: Config, steps_per_epoch: int) -> keras.Model:
    net.compile(
        optimizer=optimizer(cfg, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=cfg.train.jit_compile,
    )
    return net


class _NotTheH5Notice(logging.Filter):
    """Keras calls .h5 legacy on every save; the format is the one asked for (the README says so once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "saving your model as an HDF5 file" not in record.getMessage()


def save_model(net: keras.Model, target: Path) -> None:
    """The model alone (no optimizer state: checkpoints hold that), written atomically."""
    notice, absl = _NotTheH5Notice(), logging.getLogger("absl")
    absl.addFilter(notice)
    try:
        with files.atomic_path(target) as tmp:
            net.save(tmp, include_optimizer=False)
    finally:
        absl.removeFilter(notice)


def fit(cfg: Config, workdir: Path, classes: list[str], stats: dict, train_index, val_index):
    """Train under the configured strategy and precision; returns (float32 model, history rows, first epoch)."""
    t = cfg.train
    steps = -(-len(train_index) // t.batch_size)
    folder = resume_folder(cfg, workdir) if t.resume else None
    if (workdir / CHECKPOINTS).is_dir():  # checkpoints of other trainings can never resume
        for other in (workdir / CHECKPOINTS).iterdir():
            if other != folder:
                shutil.rmtree(other, ignore_errors=True)
    keras.utils.set_random_seed(cfg.base.seed)
    policy, previous = precision_policy(t.mixed_precision), keras.mixed_precision.global_policy()
    distribution = strategy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        with distribution.scope():
            net = build_model(cfg, classes, stats)
            # Batches come as uint8 pixels and colour shifts (tasks.learning.pipeline); the model that
            # takes them shares its weights with `net`, which is what is saved.
            trainer = compile_model(pipeline.training_model(net), cfg, steps)
            checkpoint = Checkpoint(folder)
            done = checkpoint.restore(trainer)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    print(f"train: {device_note(distribution.num_replicas_in_sync, policy)}; {len(train_index)} training and "
          f"{len(val_index)} validation images, {net.count_params():,} parameters"
          + (f"; resuming after epoch {done} from {folder.relative_to(workdir)}" if done else ""))

    logs = workdir / paths.LOGS
    if not done:
        shutil.rmtree(logs, ignore_errors=True)
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    train_ds = pipeline.training_set(train_index, cfg.augment, stats, t.batch_size, cfg.base.seed, t.epochs,
                                     first_epoch=done, cache=t.cache)
    val_ds = pipeline.validation_set(val_index, cfg.augment, t.batch_size) if len(val_index) else None
    if done < t.epochs and not checkpoint.stopped:
        trainer.fit(
            train_ds,
            validation_data=val_ds,
            epochs=t.epochs,
            initial_epoch=done,
            steps_per_epoch=steps,
            callbacks=callbacks(cfg, logs, checkpoint, done, val_ds is not None),
            shuffle=False,  # the data set shuffles itself, by (seed, epoch)
            verbose=1 if sys.stdout.isatty() else 2,  # a bar in a terminal, a line per epoch in logs
        )
    history = checkpoint.history
    if history and not math.isfinite(history[-1].get("loss", 0.0)):
        if folder:
            shutil.rmtree(folder, ignore_errors=True)  # resuming would start from the diverged weights
        raise StepError(f"training diverged: the loss is not a number after epoch {history[-1]['epoch']}; "
                        "lower train.learning_rate, or use another model.init or augment.normalize")
    if policy != "float32":  # save a float32 copy, which predicts the same on any device
        export = build_model(cfg, classes, stats)
        export.set_weights(net.get_weights())
        net = export
    return net, history, done


def run(cfg: Config, workdir: Path) -> Summary:
    """Train, then write models/alexnet.h5, its model card, history and TensorBoard logs."""
    index, stats = pipeline.read_prepared(workdir)
    classes = stats["classes"]
    train_index, val_index = index[index["subset"] == "train"], index[index["subset"] == "validation"]
    start = time.monotonic()
    net, history, resumed = fit(cfg, workdir, classes, stats, train_index, val_index)
    seconds = time.monotonic() - start

    # One column order, whether the rows came from this process or from a checkpoint.
    frame = pd.DataFrame(history)
    files.write_csv(workdir / paths.HISTORY, frame[["epoch", *sorted(c for c in frame if c != "epoch")]])
    save_model(net, workdir / paths.MODEL)
    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    card = {
        "classes": classes,
        "class_names": stats.get("class_names", classes),
        "variant": cfg.model.variant,
        "input_size": cfg.augment.crop_size,
        "image_size": cfg.augment.image_size,
        "normalisation": pipeline.normalisation(cfg.augment, stats, cfg.model.init),
        "params": {name: cfg.section(name) for name in STEP.params},
        "parameters": net.count_params(),
        "data": {
            "index_sha256": files.sha256_file(workdir / paths.AUGMENT_INDEX),
            "stats_sha256": files.sha256_file(workdir / paths.STATS),
            "train_images": len(train_index),
            "validation_images": len(val_index),
        },
        "epochs": len(history),
        "final_epoch": final,
    }  # no timings or run details here: the card is versioned data, a function of its inputs
    files.write_json(workdir / paths.MODEL_CARD, card)
    if cfg.train.resume:  # finished: the checkpoint has served
        shutil.rmtree(resume_folder(cfg, workdir), ignore_errors=True)
    return {"step": STEP.name, "model": paths.MODEL, "epochs": len(history), "resumed_after_epoch": resumed,
            "fit_seconds": round(seconds, 1), **final}


train_task = step_task(STEP, run)
