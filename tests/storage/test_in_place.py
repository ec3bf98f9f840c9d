"""Local images are indexed where they are, never copied, and a source changed afterwards stops the steps."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import merge
from hostile import cmyk_jpeg, jpeg, photo
from tasks import augment, download, fetch_urls, paths, split
from tasks.errors import StepError
from tasks.params import validate

CLASSES = ("bees", "wasps")


def folder_project(workdir: Path, local_images: str = "in_place") -> tuple[Path, dict]:
    """A folder source of 2 x 12 JPEGs (one a CMYK JPEG, one a second copy of another image); params for it."""
    photos = workdir / "photos"
    for c, cls in enumerate(CLASSES):
        (photos / cls).mkdir(parents=True)
        for i in range(12):
            (photos / cls / f"{i:02d}.jpg").write_bytes(jpeg(photo(100 * c + i, (90, 120))))
    (photos / "bees" / "cmyk.jpg").write_bytes(cmyk_jpeg())
    shutil.copy(photos / "bees" / "00.jpg", photos / "bees" / "twin.jpg")
    params = {"data": {"source": "folder", "folder": "photos", "classes": {c: {} for c in CLASSES},
                       "images_per_class": None, "embedded_mirror": False},
              "download": {"min_images_per_class": 5, "local_images": local_images},
              "split": {"validation_fraction": 0.25},
              "augment": {"image_size": 76, "crop_size": 67, "plot_images": 2}}
    return photos, params


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def prepared(workdir: Path, local_images: str = "in_place") -> tuple[Path, object]:
    photos, params = folder_project(workdir, local_images)
    cfg = validate(params)
    for step in (fetch_urls, download, split):
        step.run(cfg, workdir)
    return photos, cfg


def test_a_folder_is_indexed_in_place_only_converted_images_are_stored_and_the_sources_are_untouched(tmp_path):
    photos, params = folder_project(tmp_path)
    before = snapshot(photos)
    cfg = validate(params)
    fetch_urls.run(cfg, tmp_path)
    summary = download.run(cfg, tmp_path)
    assert summary["ok"] == {"bees": 13, "wasps": 12}  # the twin counted once, the CMYK JPEG kept
    index = pd.read_csv(tmp_path / paths.IMAGE_INDEX, keep_default_na=False)
    in_place = index[index["shard"].str.startswith("photos/")]
    assert len(in_place) == 24 and (in_place["offset"] == 0).all()
    for row in in_place.itertuples():  # each row names the file itself, and all of its bytes
        assert (tmp_path / row.shard).stat().st_size == row.size
    stored = sorted((tmp_path / paths.IMAGES).glob("*.tar"))
    assert len(stored) == 1 and index["shard"].str.startswith(f"{paths.IMAGES}/").sum() == 1  # the CMYK one, as RGB
    assert snapshot(photos) == before  # nothing rewritten, not even the folder holding a duplicate


def test_copies_on_request_give_the_same_canonical_images(tmp_path):
    made = {}
    for mode in ("in_place", "copy"):
        work = tmp_path / mode
        _, cfg = prepared(work, mode)
        augment.run(cfg, work)
        made[mode] = snapshot(work / paths.AUGMENTED)
        copies = sum(p.stat().st_size for p in (work / paths.IMAGES).glob("*.tar"))
        photos = sum(p.stat().st_size for p in (work / "photos").rglob("*.jpg"))
        assert copies > photos * 0.9 if mode == "copy" else copies < photos * 0.2
    drop_mtimes = {mode: {name: data for name, (data, _) in files.items()} for mode, files in made.items()}
    assert drop_mtimes["in_place"] == drop_mtimes["copy"]


@pytest.mark.parametrize("change", ["rewritten", "cut short", "moved"])
def test_a_source_changed_after_the_download_stops_augment_naming_it_and_leaves_its_outputs(tmp_path, change):
    photos, cfg = prepared(tmp_path)
    augment.run(cfg, tmp_path)
    outputs = snapshot(tmp_path / paths.AUGMENTED)
    image = photos / "wasps" / "03.jpg"
    if change == "rewritten":  # another picture of the same size: only the content tells
        data = image.read_bytes()
        image.write_bytes(data[:1000] + bytes(255 - b for b in data[1000:2000]) + data[2000:])
    elif change == "cut short":
        image.write_bytes(image.read_bytes()[:-500])
    else:
        os.rename(photos, tmp_path / "elsewhere")
    said = "is missing" if change == "moved" else "has changed"
    with pytest.raises(StepError, match=f"^photos {said} since the download step indexed the images in it"):
        augment.run(cfg, tmp_path)
    assert snapshot(tmp_path / paths.AUGMENTED) == outputs
    if change != "moved":  # run again from the download: the new content is what gets used
        for step in (download, split, augment):
            step.run(cfg, tmp_path)
        index = pd.read_csv(tmp_path / paths.IMAGE_INDEX, keep_default_na=False)
        kept = index.loc[index["url"] == "file:photos/wasps/03.jpg", "sha256"].tolist()
        assert kept == ([hashlib.sha256(image.read_bytes()).hexdigest()] if change == "rewritten" else [])


def test_an_archive_changed_after_fetch_urls_stops_the_download_before_it_reads_an_offset(tmp_path):
    import ilsvrc

    held = tmp_path / "imagenet"
    ilsvrc.make(held, ["n01440764", "n02102040"], train=3, val=1)
    wnids = ("n01440764", "n02102040")
    cfg = validate(merge({"data": {"source": "ilsvrc2012", "classes": {w: {"wnid": w} for w in wnids},
                                   "images_per_class": None, "embedded_mirror": False,
                                   "ilsvrc2012": {"train": "imagenet/ILSVRC2012_img_train.tar",
                                                  "val": "imagenet/ILSVRC2012_img_val.tar",
                                                  "val_solution": "imagenet/LOC_val_solution.csv"}}},
                         {"download": {"min_images_per_class": 1}}))
    fetch_urls.run(cfg, tmp_path)
    train = held / "ILSVRC2012_img_train.tar"
    train.write_bytes(train.read_bytes() + b"\0" * 10240)  # appended to: the offsets may no longer hold
    with pytest.raises(StepError, match="^imagenet/ILSVRC2012_img_train.tar has changed since the fetch_urls step"):
        download.run(cfg, tmp_path)
    assert not (tmp_path / paths.IMAGE_INDEX).exists()
    fetch_urls.run(cfg, tmp_path)
    assert download.run(cfg, tmp_path)["ok"] == {"n01440764": 6, "n02102040": 4}
    index = pd.read_csv(tmp_path / paths.IMAGE_INDEX, keep_default_na=False)
    assert set(index["shard"]) == {"imagenet/ILSVRC2012_img_train.tar", "imagenet/ILSVRC2012_img_val.tar",
                                   *index["shard"][index["shard"].str.startswith(f"{paths.IMAGES}/")]}
