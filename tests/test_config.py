"""params.yaml: typed, defaulted, validated; overrides use `-S key=value`."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, run
from tasks.config import Config
from tasks.params import ConfigError, apply_overrides, load_config


def write(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_what_a_partial_file_leaves_out(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  epochs: 3\n"))
    assert cfg.train.epochs == 3
    assert cfg.train.batch_size == Config().train.batch_size == 128
    assert cfg.augment.crop_size == 227 and cfg.model.width == 1.0  # defaults are the paper's


def test_empty_file_is_the_default_config(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_shipped_params_file_is_valid_and_demo_scale():
    cfg = load_config("params.yaml")
    assert set(cfg.data.classes) == {"ships", "bikes"}
    assert cfg.augment.crop_size < 227 and cfg.model.width < 1


@pytest.mark.parametrize(
    "text, key, hint",
    [
        ("train:\n  epoch: 3\n", "train.epoch", "unknown key"),
        ("trian:\n  epochs: 3\n", "trian", "unknown key"),
        ("train:\n  epochs: -1\n", "train.epochs", "-1"),
        ("train:\n  optimizer: rmsprop\n", "train.optimizer", "rmsprop"),
        ("augment:\n  image_size: 100\n  crop_size: 120\n", "augment.crop_size", "image_size"),
        ("data:\n  classes:\n    '../etc': {wnid: n01234567}\n    b: {wnid: n01234568}\n", "data.classes", "../etc"),
        ("data:\n  url_list_endpoint: http://127.0.0.1:1/list\n", "data.url_list_endpoint", "{wnid}"),
        ("augment:\n  policy: autoaugment\n", "augment.policy", "autoaugment"),
        ("augment:\n  normalize: zscore\n", "augment.normalize", "zscore"),
        ("augment:\n  shift: 1.5\n", "augment.shift", "1.5"),
        ("model:\n  init: xavier\n", "model.init", "xavier"),
        ("model:\n  variant: resnet\n", "model.variant", "resnet"),
        ("train:\n  mixed_precision: fp8\n", "train.mixed_precision", "fp8"),
        ("train:\n  jit_compile: sometimes\n", "train.jit_compile", "sometimes"),
        ("train:\n  early_stopping: 0\n", "train.early_stopping", "0"),
        ("evaluate:\n  misclassified: -1\n", "evaluate.misclassified", "-1"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, key, hint):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert key in str(err.value) and hint in str(err.value)


def test_overrides_are_yaml_values_on_dotted_keys():
    params = apply_overrides({"train": {"epochs": 5}}, ["train.epochs=7", "model.width=0.5", "download.max_side=null"])
    assert params == {"train": {"epochs": 7}, "model": {"width": 0.5}, "download": {"max_side": None}}


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train.epochs.x=1"])
def test_malformed_overrides_fail_clearly(override):
    with pytest.raises(ConfigError, match="override"):
        apply_overrides({"train": {"epochs": 5}}, [override])


def test_missing_or_malformed_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [1,\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n"))


@pytest.mark.parametrize("command", [["stage", "split"], ["run"]])
def test_cli_rejects_bad_params_with_status_2_and_touches_nothing(tmp_path, command):
    write(tmp_path, yaml.safe_dump({"split": {"validation_fraction": 1.5}}))
    existing = tmp_path / "data" / "split.csv"
    existing.parent.mkdir()
    existing.write_text("path,class,sha256,subset\n")
    done = run(["alexnet", *command], tmp_path, check=False)
    assert done.returncode == 2
    assert "split.validation_fraction" in done.stderr and "Traceback" not in done.stderr
    assert existing.read_text() == "path,class,sha256,subset\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "params.yaml", "split.csv"]


def test_cli_override_errors_name_the_key(tmp_path):
    write(tmp_path, "")
    done = run(["alexnet", "stage", "split", "-S", "train.epochs=zero"], tmp_path, check=False)
    assert done.returncode == 2 and "train.epochs" in done.stderr


def test_paper_params_file_is_the_paper_scale():
    cfg = load_config("params-paper.yaml")
    assert (cfg.augment.image_size, cfg.augment.crop_size, cfg.model.width, cfg.train.batch_size) == (256, 227, 1.0, 128)
    assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.weight_decay, cfg.train.schedule) == (
        "sgd", 0.9, 0.0005, "plateau")


def test_model_side_defaults_are_the_papers(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  jit_compile: true\n"))
    assert cfg.train.jit_compile is True and Config().train.jit_compile == "auto"
    assert (cfg.augment.policy, cfg.augment.random_crop, cfg.augment.flip, cfg.augment.pca_std) == (
        "paper", True, True, 0.1)
    assert (cfg.model.variant, cfg.model.dropout, cfg.train.resume, cfg.evaluate.ten_crop) == ("paper", 0.5, True, True)


def test_tutorial_params_file_is_the_tutorials_recipe():
    cfg = load_config("params-tutorial.yaml")
    assert (cfg.model.variant, cfg.augment.policy, cfg.augment.normalize) == ("seed", "seed", "rescale")
    assert (cfg.augment.rotation, cfg.augment.shift, cfg.augment.shear, cfg.augment.zoom) == (10, 0.1, 0.1, 0.1)
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.batch_size, cfg.train.weight_decay) == (
        "adam", 0.001, 32, 0)


def test_class_sets_resolve_to_the_synsets_in_the_standard_order(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  classes: imagenet1k\n"))
    wnids = list(cfg.data.classes)
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids)
    assert wnids[0] == "n01440764" and all(cfg.data.classes[w].wnid == w for w in wnids)
    names = cfg.data.display_names()
    assert names["n01440764"] == "tench" and names["n15075141"] == "toilet tissue"
    assert len(set(names.values())) == 1000  # every name tells its class apart (two cranes, two maillots)
    nette = load_config(write(tmp_path, "data:\n  classes: imagenette\n")).data.display_names()
    assert nette == {"n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
                     "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
                     "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
                     "n03888257": "parachute"}
    assert set(load_config(write(tmp_path, "data:\n  classes: imagewoof\n")).data.classes) <= set(wnids)


def test_a_file_of_wnids_is_a_class_set(tmp_path):
    (tmp_path / "mine.txt").write_text("# my classes\nn02123045\tmy cat\nn02085620\n\n")
    cfg = load_config(write(tmp_path, f"data:\n  classes: {tmp_path / 'mine.txt'}\n"))
    assert cfg.data.display_names() == {"n02123045": "my cat", "n02085620": "Chihuahua"}  # named by ImageNet-1k
    (tmp_path / "bad.txt").write_text("n02123045\ncat\n")
    with pytest.raises(ConfigError, match=r"data.classes: .*bad.txt, line 2: 'cat' is not a wnid"):
        load_config(write(tmp_path, f"data:\n  classes: {tmp_path / 'bad.txt'}\n"))
    with pytest.raises(ConfigError, match="neither a class set"):
        load_config(write(tmp_path, "data:\n  classes: imagenet22k\n"))


def test_paper_params_file_is_the_papers_run_on_imagenet_1k():
    cfg = load_config("params-paper.yaml")
    assert cfg.data.source == "ilsvrc2012" and len(cfg.data.classes) == 1000 and cfg.data.images_per_class is None
    assert cfg.split.validation == "source" and cfg.model.init == "caffe" and cfg.evaluate.ten_crop
    assert (cfg.train.epochs, cfg.train.learning_rate) == (90, 0.01)


def test_the_paper_run_without_the_archives_names_the_missing_file(tmp_path):
    done = run(["alexnet", "stage", "fetch_urls", "--params", str(REPO / "params-paper.yaml")], tmp_path, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"data.ilsvrc2012.train: file not found: {tmp_path}/imagenet/ILSVRC2012_img_train.tar" in done.stderr
    assert not (tmp_path / "data").exists()
