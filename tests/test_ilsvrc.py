"""`data.source: ilsvrc2012`: the archives as ImageNet distributes them, on a miniature with their exact layout."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

import ilsvrc
from conftest import BIN, merge, tiny_params
from tasks import augment, download, evaluate, fetch_urls, paths, split, train
from tasks.acquire import archives
from tasks.errors import StepError
from tasks.params import validate

pytestmark = pytest.mark.slow

WNIDS = ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> tuple[Path, dict]:
    """The four files in a folder of their own, and what each archive holds."""
    folder = tmp_path_factory.mktemp("imagenet")
    return folder, ilsvrc.make(folder, WNIDS, train=8, val=4)


def params(folder: Path, labels: str = "devkit", **sections) -> dict:
    """Tiny params reading the miniature, the classes from a file of wnids, the official validation set."""
    (folder / "classes.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    labelled = {"devkit": str(folder / "ILSVRC2012_devkit_t12.tar.gz")} if labels == "devkit" else {
        "val_solution": str(folder / "LOC_val_solution.csv")}
    data = {"source": "ilsvrc2012", "classes": str(folder / "classes.txt"), "images_per_class": None,
            "embedded_mirror": False, "ilsvrc2012": {"train": str(folder / "ILSVRC2012_img_train.tar"),
                                                     "val": str(folder / "ILSVRC2012_img_val.tar"), **labelled}}
    base = tiny_params(9)
    base["data"] = data
    return merge(merge(base, {"download": {"min_images_per_class": 4}, "split": {"validation": "source"},
                              "augment": {"plot_images": 2}}), sections)


def member_digests(archive: Path, names: list[str]) -> set[str]:
    """SHA-256 of the named members of an archive (the digests the download records)."""
    found = {}
    for name, offset, size in archives.members(archive, nested=lambda inner: True):
        if name.rsplit("/", 1)[-1] in names:
            with open(archive, "rb") as handle:
                handle.seek(offset)
                found[name] = hashlib.sha256(handle.read(size)).hexdigest()
    return set(found.values())


def test_the_miniature_goes_end_to_end_with_the_official_validation_set(held, tmp_path):
    folder, found = held
    cfg = validate(params(folder))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fetch_urls.run(cfg, tmp_path)
    for wnid in WNIDS:  # read in place: entries into the archives, the validation images first
        lines = (tmp_path / paths.URLS / f"{wnid}.txt").read_text().splitlines()
        subsets = [line.split("\t")[1] for line in lines]
        assert subsets == ["validation"] * 4 + ["train"] * len(found["train"][wnid])
        assert all(line.startswith("tar:" + str(folder).lstrip("/")) or line.startswith(f"tar:{folder}")
                   for line in lines)
    summary = download.run(cfg, tmp_path)
    assert summary["ok"] == {w: 4 + len(found["train"][w]) for w in WNIDS}  # the CMYK JPEG and the PNG kept
    index = pd.read_csv(tmp_path / paths.IMAGE_INDEX, keep_default_na=False)
    assert index["member"].str.endswith(".png").sum() == 1  # the PNG named .JPEG, stored as what it is
    assert {p.name for p in folder.iterdir()} == set(before)  # nothing extracted next to the archives
    # Read in place: the index points into the archives, and data/images stores only what had to be
    # converted (the CMYK JPEG, as RGB), with the archives' digests.
    trains = sum(map(len, found["train"].values()))
    assert index["shard"].str.endswith("ILSVRC2012_img_train.tar").sum() == trains - 1
    assert index["shard"].str.endswith("ILSVRC2012_img_val.tar").sum() == 12
    assert {p.suffix for p in (tmp_path / paths.IMAGES).iterdir()} == {".csv", ".json", ".tar"}
    assert sum(p.stat().st_size for p in (tmp_path / paths.IMAGES).glob("*.tar")) < 50_000
    names = pd.read_csv(tmp_path / paths.CLASS_NAMES)
    assert names["name"].tolist() == ["tench", "English springer", "cassette player"]

    split.run(cfg, tmp_path)
    table = pd.read_csv(tmp_path / paths.SPLIT)
    validation = set(table.loc[table["subset"] == "validation", "sha256"])
    official = member_digests(folder / "ILSVRC2012_img_val.tar",
                              [n for w in WNIDS for n in found["val"][w]])
    assert validation == official and len(validation) == 12

    augment.run(cfg, tmp_path)
    train.run(cfg, tmp_path)
    result = evaluate.run(cfg, tmp_path)
    assert result["images"] == 12
    card = yaml.safe_load((tmp_path / paths.EVAL_CARD).read_text())
    assert card["class_names"] == ["tench", "English springer", "cassette player"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the archives are only read


def test_kaggles_solution_file_labels_the_validation_set_as_the_devkit_does(held, tmp_path):
    folder, _ = held
    lists = {}
    for labels in ("devkit", "kaggle"):
        work = tmp_path / labels
        fetch_urls.run(validate(params(folder, labels)), work)
        lists[labels] = {w: (work / paths.URLS / f"{w}.txt").read_text() for w in WNIDS}
    assert lists["devkit"] == lists["kaggle"]


@pytest.mark.parametrize("damage", ["missing", "cut short", "not a tar"])
def test_a_missing_or_damaged_archive_is_a_clear_error_and_leaves_the_lists_untouched(held, tmp_path, damage):
    folder, _ = held
    work = tmp_path / "work"
    fetch_urls.run(validate(params(folder)), work)
    lists = {p.name: p.read_bytes() for p in (work / paths.URLS).iterdir()}
    broken = tmp_path / "ILSVRC2012_img_train.tar"
    whole = (folder / "ILSVRC2012_img_train.tar").read_bytes()
    if damage == "cut short":
        broken.write_bytes(whole[: len(whole) // 2])
    elif damage == "not a tar":
        broken.write_bytes(b"<html>Access denied</html>" * 40)
    cfg = params(folder, data={"ilsvrc2012": {"train": str(broken)}})
    expected = {"missing": "data.ilsvrc2012.train: file not found", "cut short": "cut short",
                "not a tar": "not a readable tar"}[damage]
    with pytest.raises(StepError, match=expected):
        fetch_urls.run(validate(cfg), work)
    assert {p.name: p.read_bytes() for p in (work / paths.URLS).iterdir()} == lists
    (work / "params.yaml").write_text(yaml.safe_dump(cfg))  # and from the command line: one line, no traceback
    done = subprocess.run([str(BIN / "alexnet"), "stage", "fetch_urls"], cwd=work, capture_output=True, text=True)
    assert done.returncode == 1 and expected in done.stderr and "Traceback" not in done.stderr
