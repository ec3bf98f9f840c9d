"""Training and evaluation on generated data: learning, resuming after SIGKILL, devices, precision."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import BIN, REPO, merge, tiny_params
from generated import prepare, prepare_random
from tasks import evaluate, paths, train
from tasks.learning import pipeline
from tasks.params import validate
from tasks.storage import files, shards

pytestmark = pytest.mark.slow


def params(**sections) -> dict:
    # The generated sets need no demo source; its port is never used.
    return merge(tiny_params(9), sections)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    """Three patterns, prepared for training."""
    return prepare(tmp_path_factory.mktemp("three"), params(), classes=3, train=40, validation=10)


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> Path:
    """Six patterns (more than five, so top-5 error applies), trained briefly and evaluated."""
    workdir = prepare(tmp_path_factory.mktemp("six"), params(), classes=6, train=12, validation=6)
    cfg = validate(params(train={"epochs": 1}))
    train.run(cfg, workdir)
    evaluate.run(cfg, workdir)
    return workdir


# Learns the three patterns (measured with other data and training seeds: 96.7% to 100%), with
# dropout and a schedule: what a resumed training must reproduce.
LEARNING = {"model": {"width": 0.25}, "train": {"epochs": 25, "schedule": "cosine"}}


@pytest.fixture(scope="module")
def learned(three, tmp_path_factory) -> SimpleNamespace:
    """An uninterrupted training on `three`, evaluated; its outputs kept in a folder of their own."""
    cfg = validate(params(**LEARNING))
    summary = train.run(cfg, three)
    result = evaluate.run(cfg, three)
    kept = tmp_path_factory.mktemp("learned")
    for name in (paths.MODEL, paths.MODEL_CARD, paths.HISTORY):
        shutil.copy2(three / name, kept / Path(name).name)
    return SimpleNamespace(summary=summary, result=result, folder=kept)


def test_model_learns_a_small_generated_set(learned):
    assert learned.summary["epochs"] == 25
    assert learned.summary["val_accuracy"] >= 0.9 and learned.result["accuracy"] >= 0.9, learned
    assert learned.result["top5_error"] == "n/a: 5 or fewer classes"


def test_alexnet_predict_names_validation_images_by_their_own_class(three, learned, tmp_path):
    """The label of each image, from augment through the model card to `alexnet predict`: the original images
    of the validation set, under names that do not say their class, come back with their class's name."""
    split = pd.read_csv(three / paths.SPLIT).query("subset == 'validation'")
    truth = {}
    with shards.Reader() as reader:
        for row in split.itertuples():
            image = tmp_path / f"{row.sha256[:16]}.png"
            image.write_bytes(reader.read(three / row.shard, row.offset, row.size))
            truth[str(image)] = row._2  # the class column
    done = subprocess.run(["alexnet", "predict", *truth, "--model", str(learned.folder / "alexnet.h5")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # Per image: its path, a header, then the best class: "1  <class>  <probability>".
    predicted = {lines[i]: lines[i + 2].split()[1] for i in range(0, len(lines), 3)}
    assert predicted.keys() == truth.keys()
    right = sum(predicted[image] == cls for image, cls in truth.items())
    assert right >= 0.9 * len(truth), (right, len(truth))
    assert set(predicted.values()) == set(truth.values())


def test_evaluation_reports_both_views_top5_f1_and_mistakes(six):
    result = json.loads((six / paths.EVAL).read_text())
    classes = json.loads((six / paths.STATS).read_text())["classes"]
    assert result["view"] == "ten_crop" and result["images"] == 36 and result["classes"] == 6
    for view in ("centre_crop", "ten_crop"):
        scores = result[view]
        assert isinstance(scores["top5_error"], float) and 0 <= scores["top5_error"] <= scores["top1_error"]
        assert scores["top1_error"] == pytest.approx(1 - scores["accuracy"], abs=1e-4)
    assert result["accuracy"] == result["ten_crop"]["accuracy"]
    per_class = pd.read_csv(six / paths.CLASS_SCORES)
    assert sorted(per_class["class"]) == sorted(classes) and per_class["recall"].is_monotonic_increasing
    for row in per_class.itertuples():
        p, r = row.precision, row.recall
        assert row.f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=2e-4)
    assert result["mean_f1"] == pytest.approx(per_class["f1"].mean(), abs=1e-3)
    confusion = pd.read_csv(six / paths.CONFUSION)
    wrong = confusion[confusion.actual != confusion.predicted]
    assert result["misclassified_count"] == len(wrong)
    pairs = wrong.groupby(["actual", "predicted"]).size()
    assert [p["images"] for p in result["most_confused"]] == sorted(pairs, reverse=True)[:10]
    listed = result["misclassified"]
    assert len(listed) == min(len(wrong), 20)
    assert [m["probability"] for m in listed] == sorted((m["probability"] for m in listed), reverse=True)
    members = {(m, s) for m, s in zip(*[pd.read_csv(six / paths.AUGMENT_INDEX)[c] for c in ("member", "shard")])}
    assert all((m["image"], m["shard"]) in members and m["actual"] != m["predicted"] for m in listed)


def test_evaluation_model_card_adds_metrics_to_the_training_card(six):
    card = json.loads((six / paths.EVAL_CARD).read_text())
    trained = json.loads((six / paths.MODEL_CARD).read_text())
    assert {k: card[k] for k in trained} == trained
    assert card["model_sha256"] == files.sha256_file(six / paths.MODEL)
    assert card["evaluation"]["accuracy"] == json.loads((six / paths.EVAL).read_text())["accuracy"]
    assert trained["normalisation"]["std"] and len(trained["normalisation"]["mean"]) == 3
    assert trained["data"]["index_sha256"] == files.sha256_file(six / paths.AUGMENT_INDEX)
    assert trained["params"]["model"]["width"] == 0.125 and trained["input_size"] == 67


def test_ten_crop_probabilities_are_the_mean_of_the_ten_views(six):
    from tasks.learning import pipeline

    cfg = validate(params())
    index, _ = pipeline.read_prepared(six)
    val = index.query("subset == 'validation'").head(3)
    net = keras.models.load_model(six / paths.MODEL, compile=False)
    centre, mean = evaluate.predict_views(net, pipeline.eval_views(val, cfg.augment, 2, ten=True))
    assert centre.shape == mean.shape == (3, 6)
    for i, (shard, offset, size) in enumerate(val[["shard", "offset", "size"]].itertuples(index=False)):
        with open(shard, "rb") as data:
            data.seek(offset)
            crops = pipeline.ten_crops(pipeline.decode(data.read(size)), 67).numpy()
        each = net.predict(crops, verbose=0)
        np.testing.assert_allclose(centre[i], each[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(mean[i], each.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(mean[i].sum(), 1.0, rtol=1e-5)


def test_scores_give_top_k_errors():
    probabilities = np.array([[0.1, 0.2, 0.3, 0.05, 0.05, 0.1, 0.2],   # true 0: rank 4 -> top-5 hit, top-1 miss
                              [0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],  # true 0: top-1 hit
                              [0.3, 0.25, 0.2, 0.15, 0.05, 0.04, 0.01],  # true 6: rank 7 -> miss
                              [0.3, 0.1, 0.25, 0.15, 0.12, 0.05, 0.03],  # true 1: rank 5 -> top-5 hit
                              [0.3, 0.05, 0.25, 0.15, 0.12, 0.1, 0.03],  # true 1: rank 6 -> top-5 miss
                              [0.4, 0.1, 0.3, 0.1, 0.05, 0.03, 0.02]])  # true 2: rank 2 -> top-1 miss
    result = evaluate.scores(np.array([0, 0, 6, 1, 1, 2]), probabilities, [f"c{i}" for i in range(7)])
    assert result["top1_error"] == pytest.approx(5 / 6, abs=1e-4)
    assert result["top5_error"] == pytest.approx(2 / 6, abs=1e-4)
    assert result["per_class"].set_index("class").loc["c0"].to_dict() == {  # predicted 5 times, 1 of them right
        "precision": 0.2, "recall": 0.5, "f1": 0.2857, "support": 2}


def test_a_thousand_class_evaluation_runs_in_bounded_memory_and_reports_briefly(tmp_path):
    """`alexnet stage evaluate` over 1,000 classes: under 1.5 GB, a short console summary, readable outputs."""
    classes = [f"c{i:04d}" for i in range(1000)]
    workdir = prepare_random(tmp_path, params(), classes)
    cfg = validate(params())
    index, stats = pipeline.read_prepared(workdir)
    net = train.build_model(cfg, stats["classes"], stats)
    train.save_model(net, workdir / paths.MODEL)
    files.write_json(workdir / paths.MODEL_CARD, {"classes": stats["classes"], "class_names": [
        f"name of {c}" for c in stats["classes"]], "image_size": 76, "input_size": 67})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params(), sort_keys=False))
    # The process's own high-water mark (VmHWM): a child's rusage would count the memory of this one,
    # which it was forked from.
    script = ("import sys; from flows.cli import main; code = main(['stage', 'evaluate']); "
              "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    peak_mb = int(output.split("VmHWM:")[1].split()[0]) / 1024
    assert peak_mb < 1500, f"peak {peak_mb:.0f} MB"
    said = [line for line in output.splitlines() if line.startswith("evaluate:")]
    assert len(said) == 1 and len(said[0]) < 400 and "name of c" in said[0]
    result = json.loads((workdir / paths.EVAL).read_text())
    assert result["classes"] == 1000 and len(json.dumps({k: v for k, v in result.items() if k != "misclassified"})) < 4000
    assert len(pd.read_csv(workdir / paths.CLASS_SCORES)) == 1000
    assert (workdir / paths.CONFUSION_PLOT).stat().st_size < 2_000_000


def write_params(workdir: Path, **sections) -> None:
    (workdir / "params.yaml").write_text(yaml.safe_dump(params(**sections), sort_keys=False))


def weights(model: Path) -> dict[str, np.ndarray]:
    """Every array of a saved model, by its path in the file."""
    found = {}
    with h5py.File(model) as h5:
        h5.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


def kill_and_resume(workdir: Path, sections: dict, after: int = 2) -> None:
    """A real `alexnet stage train`, killed with SIGKILL once it has checkpointed epoch `after` (or a later one),
    then run again to the end."""
    write_params(workdir, **sections)
    cfg = validate(params(**sections))
    folder = train.resume_folder(cfg, workdir)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = workdir / "first.log"

    def checkpointed() -> int:
        state = folder / "state.json"
        return json.loads(state.read_text())["epoch"] if state.is_file() else 0

    with open(log, "w") as out:
        first = subprocess.Popen(["alexnet", "stage", "train"], cwd=workdir, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while checkpointed() < after:
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait(60)
    assert first.returncode == -signal.SIGKILL
    done = checkpointed()
    assert after <= done < cfg.train.epochs
    second = subprocess.run(["alexnet", "stage", "train"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming after epoch {done}" in second.stdout
    assert not folder.exists()  # a finished training leaves no checkpoint behind


def assert_same_training(workdir: Path, reference: Path) -> None:
    """The model in `workdir` is the one in `reference`, array by array and bit for bit, with its history and card."""
    got, expected = weights(workdir / paths.MODEL), weights(reference / "alexnet.h5")
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert (workdir / paths.HISTORY).read_text() == (reference / "history.csv").read_text()
    assert (workdir / paths.MODEL_CARD).read_text() == (reference / "alexnet.json").read_text()


def test_training_killed_with_sigkill_resumes_exactly(three, learned):
    """Killed once it has checkpointed, run again: the weights, history and card of the uninterrupted run."""
    kill_and_resume(three, LEARNING)
    assert_same_training(three, learned.folder)
    history = pd.read_csv(three / paths.HISTORY)
    assert history.columns.tolist() == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert history["epoch"].tolist() == list(range(1, 26))


@pytest.mark.parametrize("sections", [
    # The paper's rule: the rate divided on a plateau, and early stopping; what both remember is state too.
    {"train": {"schedule": "plateau", "patience": 1, "early_stopping": 3, "epochs": 5, "cache": True}},
    # Mixed precision (float16 with its loss scale) and Adam.
    {"train": {"epochs": 3, "mixed_precision": "float16", "optimizer": "adam", "learning_rate": 0.001}},
], ids=["plateau-early-stopping-cache", "float16-adam"])
def test_a_resumed_training_is_exact_whatever_its_settings(three, sections, tmp_path):
    cfg = validate(params(**sections))
    train.run(cfg, three)
    for name in (paths.MODEL, paths.MODEL_CARD, paths.HISTORY):
        shutil.copy2(three / name, tmp_path / Path(name).name)
    kill_and_resume(three, sections)
    assert_same_training(three, tmp_path)


def test_checkpoints_of_other_trainings_are_not_resumed(three):
    cfg = validate(params(train={"epochs": 1}))
    stale = three / train.CHECKPOINTS / "0123456789abcdef"
    stale.mkdir(parents=True)
    files.write_json(stale / "state.json", {"epoch": 1, "weights": "missing.weights.h5", "history": []})
    summary = train.run(cfg, three)
    assert summary["resumed_after_epoch"] == 0 and not stale.exists()


MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pathlib import Path
from tasks import train
from tasks.params import load_config
summary = train.run(load_config("params.yaml"), Path.cwd())
print("EPOCHS", summary["epochs"], "ACCURACY", summary["accuracy"])
"""


def test_training_spreads_over_two_logical_devices_with_mirrored_strategy(three):
    """Logical devices must exist before TensorFlow starts, hence a process of its own."""
    write_params(three, train={"epochs": 2, "batch_size": 16})
    done = subprocess.run([sys.executable, "-c", MIRRORED], cwd=three, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MirroredStrategy over 2 devices" in done.stdout
    assert "EPOCHS 2" in done.stdout
    history = pd.read_csv(three / paths.HISTORY)
    assert history["epoch"].tolist() == [1, 2] and history["loss"].notna().all()


def test_mixed_precision_training_saves_a_float32_model_of_the_trained_weights(three, monkeypatch):
    built, build = [], train.build_model  # the models train builds: the one it trains, then the copy it saves

    def building(*args):
        built.append(build(*args))
        return built[-1]

    monkeypatch.setattr(train, "build_model", building)
    cfg = validate(params(train={"epochs": 2, "mixed_precision": "bfloat16"}))
    summary = train.run(cfg, three)
    assert np.isfinite(summary["loss"])
    trained = built[0]
    saved = keras.models.load_model(three / paths.MODEL, compile=False)
    assert trained.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # the run leaves the policy as it was
    for got, expected in zip(saved.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)
    # It predicts what the trained model did, but for bfloat16's rounding (8 bits of mantissa).
    index, _ = pipeline.read_prepared(three)
    views = np.concatenate([batch.numpy()[:, 0] for batch in pipeline.eval_views(
        index.query("subset == 'validation'"), cfg.augment, 16, ten=False)])
    before, after = trained.predict(views, verbose=0), saved.predict(views, verbose=0)
    np.testing.assert_allclose(after, before, atol=0.03)
    assert (after.argmax(1) == before.argmax(1)).mean() >= 0.9


def test_device_and_precision_choices_on_cpu():
    assert train.precision_policy("auto") == "float32"  # no GPU here
    assert [train.precision_policy(s) for s in ("off", "float16", "bfloat16")] == [
        "float32", "mixed_float16", "mixed_bfloat16"]
    assert train.strategy().num_replicas_in_sync == 1
    assert train.device_note(1, "float32") == "training on CPU (no GPU visible), precision float32"


def test_plateau_and_early_stopping_watch_validation_accuracy(tmp_path):
    cfg = validate(params(train={"schedule": "plateau", "patience": 3, "early_stopping": 7}))
    found = train.callbacks(cfg, tmp_path, train.Checkpoint(None), 0, validate=True)
    plateau = next(c for c in found if isinstance(c, keras.callbacks.ReduceLROnPlateau))
    stop = next(c for c in found if isinstance(c, keras.callbacks.EarlyStopping))
    assert (plateau.monitor, plateau.factor, plateau.patience) == ("val_accuracy", 0.1, 3)
    assert (stop.monitor, stop.patience) == ("val_accuracy", 7)
    assert plateau.mode == stop.mode == "max"  # higher is better
    assert found[-1].rules == [plateau, stop]  # the checkpoint keeps what they remember
