"""params.yaml as one typed, validated config object.

Every knob has a default, so a params file with a few keys works. Unknown keys and
bad values fail at once with the key's dotted name. Overrides use DVC's
`-S key=value` syntax everywhere (CLI and the flow's `overrides` parameter).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

PARAMS_FILE = "params.yaml"

# A class name becomes a folder name: keep it to a safe, portable subset.
ClassName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class ConfigError(Exception):
    """A params file or override that cannot be used; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(Section):
    seed: int = 42


class ClassSpec(Section):
    wnid: Annotated[str, StringConstraints(pattern=r"^n\d{8}$")]


class Data(Section):
    source: Literal["imagenet_api"] = "imagenet_api"
    # ImageNet's old URL-list endpoint; `{wnid}` is replaced per class.
    url_list_endpoint: str = "http://127.0.0.1:8765/api/text/imagenet.synset.geturls?wnid={wnid}"
    # Start the embedded demo mirror when the endpoint is on a loopback address
    # and nothing answers there.
    embedded_mirror: bool = True
    classes: dict[ClassName, ClassSpec] = Field(
        default_factory=lambda: {
            "bikes": ClassSpec(wnid="n02834778"),
            "ships": ClassSpec(wnid="n04194289"),
        },
        min_length=2,
    )
    # Good images kept per class (in URL-list order); null keeps all.
    images_per_class: int | None = Field(default=None, ge=1)

    @field_validator("url_list_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        if "{wnid}" not in value:
            raise ValueError("must contain the placeholder {wnid}")
        return value

    def endpoint_is_loopback(self) -> bool:
        host = urlsplit(self.url_list_endpoint).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


class Download(Section):
    workers: int = Field(default=16, ge=1, le=512)
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    min_side: int = Field(default=32, ge=1)
    # Longer side is shrunk to this on store; null stores images as they came.
    max_side: int | None = Field(default=512, ge=32)
    max_bytes: int = Field(default=20_000_000, ge=1024)
    min_images_per_class: int = Field(default=10, ge=1)


class Split(Section):
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)


class Augment(Section):
    # Canonical size stored by the augment step (the paper: shorter side to 256,
    # centre crop 256x256) and the crop fed to the network (227).
    image_size: int = Field(default=256, ge=67)
    crop_size: int = Field(default=227, ge=67)
    # Online training transforms. paper: random crops, horizontal flips, PCA colour
    # shifts; seed: the tutorial's ImageDataGenerator settings (rotation, shift,
    # shear, zoom) on the centre crop; none: the centre crop only. Each transform
    # below switches off on its own (false or 0); those of the other policy are unused.
    policy: Literal["paper", "seed", "none"] = "paper"
    random_crop: bool = True
    flip: bool = True
    # Standard deviation of the paper's PCA colour augmentation.
    pca_std: float = Field(default=0.1, ge=0)
    # The tutorial's: degrees, fraction of the side, degrees (as Keras's generator
    # reads shear_range), zoom factor range 1 +- zoom.
    rotation: float = Field(default=10.0, ge=0, le=180)
    shift: float = Field(default=0.1, ge=0, lt=1)
    shear: float = Field(default=0.1, ge=0, lt=90)
    zoom: float = Field(default=0.1, ge=0, lt=1)
    # What the model does to its [0, 255] input: mean (subtract the training set's
    # RGB mean: the paper), standardize (also divide by its deviation), rescale
    # (x / 255: the tutorial), none. auto: rescale for the seed policy, otherwise
    # what model.init expects (paper, caffe: mean; he: standardize).
    normalize: Literal["auto", "mean", "standardize", "rescale", "none"] = "auto"
    # Images shown in plots/augmentation.png, each with several augmented variants.
    plot_images: int = Field(default=4, ge=1, le=16)

    @field_validator("crop_size")
    @classmethod
    def _crop_fits(cls, value: int, info) -> int:
        size = info.data.get("image_size")
        if size is not None and value > size:
            raise ValueError(f"must not exceed augment.image_size ({size})")
        return value


class Model(Section):
    # paper: Krizhevsky et al. 2012 (LRN, grouped convolutions, dropout);
    # seed: the tutorial's simplified Keras model.
    variant: Literal["paper", "seed"] = "paper"
    # Scales every layer's width; 1.0 is the paper's AlexNet.
    width: float = Field(default=1.0, gt=0, le=4)
    # paper: N(0, 0.01), biases 1 in conv2/4/5 and fc6/7; caffe: the Caffe
    # replica's (biases 0.1, fc6/7 N(0, 0.005)); he: He normal, biases 0.
    # The seed variant is always He-initialised, as in the tutorial.
    init: Literal["paper", "caffe", "he"] = "he"
    dropout: float = Field(default=0.5, ge=0, lt=1)


class Train(Section):
    epochs: int = Field(default=90, ge=1)
    batch_size: int = Field(default=128, ge=1)
    # sgd: momentum with weight decay inside the update, as in the paper; adam: the
    # tutorial's (its weight decay is decoupled, as Keras's AdamW-style decay).
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(default=0.01, gt=0)
    # plateau: divide the rate by 10 when validation accuracy stops improving for
    # `patience` epochs (the paper); cosine: decay smoothly to zero; constant: neither.
    schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    patience: int = Field(default=5, ge=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    # Stop when validation accuracy has not improved for this many epochs; null: never.
    early_stopping: int | None = Field(default=None, ge=1)
    # Checkpoint every epoch; a rerun with the same inputs resumes from the last one.
    resume: bool = True
    # Keep decoded training images in memory after the first epoch.
    cache: bool = False
    # auto: float16 on GPUs that support it (compute capability 7.0+), off on CPU.
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = "auto"
    # XLA compilation; auto: Keras's choice (on for a single GPU, off on CPU).
    jit_compile: bool | Literal["auto"] = "auto"


class Evaluate(Section):
    # Images in plots/predictions.png.
    grid_images: int = Field(default=8, ge=1, le=64)
    # Also score the paper's ten crops (corners and centre, flipped too, softmax averaged).
    ten_crop: bool = True
    # Misclassified validation images listed in metrics/eval.json, most confident first.
    misclassified: int = Field(default=20, ge=0)
    batch_size: int = Field(default=64, ge=1)


class Config(Section):
    base: Base = Base()
    data: Data = Data()
    download: Download = Download()
    split: Split = Split()
    augment: Augment = Augment()
    model: Model = Model()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump(mode="json")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=5` -> (["train", "epochs"], 5); the value is read as YAML, like DVC."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    params = yaml.safe_load(yaml.safe_dump(params))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = params
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return params


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return f"{key}: {message}"


def validate(params: dict[str, Any], origin: str = PARAMS_FILE) -> Config:
    try:
        return Config.model_validate(params)
    except ValidationError as exc:
        problems = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise ConfigError(f"{origin}: invalid params\n{problems}") from None


def read_params(params_file: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def load_config(params_file: str | Path = PARAMS_FILE, overrides: list[str] | None = None) -> Config:
    """Read, override and validate; raises ConfigError naming the bad key."""
    params = apply_overrides(read_params(params_file), list(overrides or []))
    return validate(params, origin=str(params_file))
