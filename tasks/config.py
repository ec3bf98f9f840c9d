"""The schema of params.yaml: one typed section per step, every knob with its default.

Every knob has a default, so a params file with a few keys works. Unknown keys and
bad values are refused (pydantic). Reading the file, `-S key=value` overrides and
the messages that name a bad key are `tasks.params`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from tasks import synsets

# A class name becomes a folder name: keep it to a safe, portable subset.
ClassName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(Section):
    seed: int = 42


Source = Literal["imagenet_api", "url_list", "html", "archive", "ilsvrc2012", "folder"]


class ClassSpec(Section):
    # The class's ImageNet synset: the endpoint's `{wnid}`, the filter on a shared
    # fall11_urls.txt-style list, and the default folder name in an archive or folder.
    wnid: Annotated[str, StringConstraints(pattern=r"^n\d{8}$")] | None = None
    # This class's source, when it is not `data.source`.
    source: Source | None = None
    # url_list: this class's own list (a path or an http(s) URL), one URL per line.
    url_list: str | None = None
    # html: web pages whose images (<img src/srcset>, <a href> to image files) are this class.
    pages: list[str] = Field(default_factory=list)
    # archive, folder: the class's folder (default: its wnid, else its name), inside
    # `data.archive` or `data.folder`; for a folder source also any path of its own.
    folder: str | None = None
    # A human-readable name for plots, the model card and `alexnet predict` (default: the class's key).
    name: str | None = None


class Ilsvrc(Section):
    """The ILSVRC-2012 archives as ImageNet distributes them (local paths; read in place, never extracted)."""

    # ILSVRC2012_img_train.tar: 1,000 per-class tars of <wnid>_<n>.JPEG.
    train: str | None = None
    # ILSVRC2012_img_val.tar: 50,000 ILSVRC2012_val_<n>.JPEG, labelled by one of the next two.
    val: str | None = None
    # ILSVRC2012_devkit_t12.tar.gz (data/ILSVRC2012_validation_ground_truth.txt and data/meta.mat).
    devkit: str | None = None
    # Or Kaggle's LOC_val_solution.csv (ImageId,PredictionString; the wnid first).
    val_solution: str | None = None

    @model_validator(mode="after")
    def _labelled(self) -> "Ilsvrc":
        if self.val and not (self.devkit or self.val_solution):
            raise ValueError("val needs its labels: devkit (ILSVRC2012_devkit_t12.tar.gz) or val_solution "
                             "(Kaggle's LOC_val_solution.csv)")
        return self


class Data(Section):
    # Where URL lists come from (per class, `classes.<name>.source` overrides it):
    # imagenet_api: `url_list_endpoint` per wnid; url_list: a text file per class or
    # one shared fall11_urls.txt-style file (`url_list`); html: web pages; archive:
    # a .tar/.tar.gz/.zip with a folder per class (`archive`); ilsvrc2012: the
    # ILSVRC-2012 archives (`ilsvrc2012`); folder: local folders.
    source: Source = "imagenet_api"
    # ImageNet's old URL-list endpoint; `{wnid}` is replaced per class.
    url_list_endpoint: str = "http://127.0.0.1:8765/api/text/imagenet.synset.geturls?wnid={wnid}"
    # A shared list, `<wnid>_<n><TAB><url>` per line (ImageNet's fall11_urls.txt): path or URL.
    url_list: str | None = None
    # An archive holding one folder per class (e.g. Imagenette's wnid folders): path or URL.
    archive: str | None = None
    # A local folder holding one folder per class (at any depth: train/<wnid>/ and val/<wnid>/ too).
    folder: str | None = None
    ilsvrc2012: Ilsvrc = Ilsvrc()
    # Deadline and size cap for fetching one list, page or archive, and the cap on
    # what an archive may extract to.
    timeout_s: float = Field(default=600.0, gt=0)
    max_bytes: int = Field(default=20_000_000_000, ge=1024)
    # Start the embedded demo mirror when the endpoint is on a loopback address
    # and nothing answers there.
    embedded_mirror: bool = True
    # The classes: explicit entries (name: spec), a class set shipped with the package
    # (imagenet1k: the 1,000 ILSVRC-2012 synsets; imagenette, imagewoof: fast.ai's
    # 10-class subsets), or a file listing wnids, one per line (optionally a tab and a name).
    classes: dict[ClassName, ClassSpec] = Field(
        default_factory=lambda: {
            "bikes": ClassSpec(wnid="n02834778"),
            "ships": ClassSpec(wnid="n04194289"),
        },
        min_length=2,
    )
    # Good images kept per class (in URL-list order); null keeps all.
    images_per_class: int | None = Field(default=None, ge=1)

    @field_validator("classes", mode="before")
    @classmethod
    def _class_set(cls, value: Any) -> Any:
        return synsets.resolve(value) if isinstance(value, str) else value

    @field_validator("url_list_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        if "{wnid}" not in value:
            raise ValueError("must contain the placeholder {wnid}")
        return value

    @model_validator(mode="after")
    def _sources_complete(self) -> "Data":
        for name, spec in self.classes.items():
            source = self.source_of(name)
            missing = {
                "imagenet_api": None if spec.wnid else "a wnid",
                "url_list": None if spec.url_list or (self.url_list and spec.wnid) else
                "its own url_list, or a wnid and data.url_list",
                "html": None if spec.pages else "pages",
                "archive": None if self.archive else "data.archive",
                "ilsvrc2012": None if spec.wnid and (self.ilsvrc2012.train or self.ilsvrc2012.val) else
                "a wnid, and data.ilsvrc2012.train or data.ilsvrc2012.val",
                "folder": None if self.folder or spec.folder else "data.folder or its own folder",
            }[source]
            if missing:
                raise ValueError(f"classes.{name} (source {source}) needs {missing}")
        return self

    def source_of(self, name: str) -> str:
        return self.classes[name].source or self.source

    def display_names(self) -> dict[str, str]:
        """Each class's human-readable name (its key when it has none)."""
        return {key: spec.name or key for key, spec in self.classes.items()}

    def endpoint_is_loopback(self) -> bool:
        host = urlsplit(self.url_list_endpoint).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


class Runner(Section):
    """Where a step's chunks run (download, augment): threads of the step's process,
    `processes` local processes (default: one per CPU core), or a Dask cluster (a
    scheduler at dask_address, else a local one of dask_workers processes; with an
    address, dask_workers is the cluster's size: at least two chunks per worker are
    kept in flight)."""

    task_runner: Literal["thread", "process", "dask"] = "thread"
    processes: int | None = Field(default=None, ge=1, le=256)
    dask_address: str | None = None
    dask_workers: int = Field(default=2, ge=1)


class Download(Runner):
    # Downloads in flight per process (cheap: one thread drives them all), and at most this many to one host.
    workers: int = Field(default=128, ge=1, le=1024)
    per_host: int = Field(default=16, ge=1, le=1024)
    # One deadline per URL for everything (connects, redirects, retries, the body),
    # so slow drips and endless streams are cut; plus per-connect and per-read limits.
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    # Retries of connection errors, timeouts, 429 and 5xx, with exponential backoff
    # from backoff_s and jitter (Retry-After honoured); never of a 404 or a bad image.
    retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0)
    max_redirects: int = Field(default=5, ge=0, le=30)
    max_bytes: int = Field(default=20_000_000, ge=1024)
    min_side: int = Field(default=32, ge=1)
    # Refused before decoding (decompression bombs), from the header's dimensions.
    max_pixels: int = Field(default=50_000_000, ge=1024)
    # Longer side is shrunk to this on store; null stores images as they came.
    max_side: int | None = Field(default=512, ge=32)
    # Images already on this disk (ILSVRC-2012's tars, an uncompressed archive, a folder):
    # in_place indexes them where they are, checked and never copied (data/images then
    # holds the index, and only the images that had to be converted to RGB), and a
    # source that changes afterwards stops the steps that read it; copy stores them in
    # shards like downloads (to push them to a DVC remote for machines without the source).
    local_images: Literal["in_place", "copy"] = "in_place"
    min_images_per_class: int = Field(default=10, ge=1)
    # Hosts that may resolve to loopback, private or other non-public addresses
    # (every other such destination is refused as blocked_host). The default is
    # the embedded demo source's.
    allowed_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost"])
    # SHA-256 digests of more "photo unavailable" images to refuse as placeholder.
    placeholder_digests: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list)
    # URLs per chunk: the unit of work a task runs and a killed run resumes from; the
    # images a chunk keeps make one shard. Where chunks run: `task_runner` (see Runner).
    chunk_size: int = Field(default=4096, ge=1)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [host.lower().strip("[]") for host in value]


class Split(Section):
    # draw: each image is drawn to the validation set with this probability, by its
    # digest. source: images the source marks (ILSVRC-2012's validation set, an
    # archive's or folder's val/) are the validation set, and those it marks as
    # training images the training set, so results compare with published ones; images
    # it does not mark are drawn.
    validation: Literal["draw", "source"] = "draw"
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)


class Augment(Runner):
    # Canonical size stored by the augment step (the paper: shorter side to 256,
    # centre crop 256x256) and the crop fed to the network (227).
    image_size: int = Field(default=256, ge=67)
    # Canonical images per shard (about; ImageNet-1k makes about 1,000 training shards,
    # as TensorFlow's 1,024). A shard is one chunk of work: where chunks run is
    # `task_runner` (see Runner).
    shard_size: int = Field(default=1250, ge=1)
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
    # Keep the training shards' JPEG bytes in memory after the first epoch (each epoch
    # then a full shuffle of them).
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


class Dvc(Section):
    # After a flow run, push what it committed to the DVC remote (`remote`, or the
    # repository's default remote).
    push: bool = False
    remote: str | None = None


class Run(Section):
    # How long a run waits for another run writing the same project folder (a flow run,
    # or `alexnet stage` under `dvc repro`) before it gives up; 0: give up at once.
    lock_timeout_s: float = Field(default=86_400.0, ge=0)


class Config(Section):
    base: Base = Base()
    data: Data = Data()
    download: Download = Download()
    split: Split = Split()
    augment: Augment = Augment()
    model: Model = Model()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    dvc: Dvc = Dvc()
    run: Run = Run()

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump(mode="json")
