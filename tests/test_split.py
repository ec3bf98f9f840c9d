"""split: deterministic, stable under additions, stratified, disjoint (property-based); the step over files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks import paths, split
from tasks.params import load_config, validate
from tasks.step import StepError
from tasks.storage import files, shards

digests = st.integers(0, 10**9).map(lambda i: files.sha256_bytes(str(i).encode()))
images = st.lists(digests, unique=True, max_size=60)


def assign(digests: list[str], fraction: float, seed: int) -> dict[str, str]:
    return {d: split.subset(d, fraction, seed) for d in digests}


@given(images, images, st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_adding_images_never_moves_an_assigned_one(old, new, fraction, seed):
    before = assign(old, fraction, seed)
    after = assign(old + [d for d in new if d not in before], fraction, seed)
    assert all(after[d] == subset for d, subset in before.items())


@given(images, st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_the_split_is_a_function_of_digest_and_seed_only(digests, fraction, seed):
    assert assign(digests, fraction, seed) == assign(digests[::-1], fraction, seed)
    assert set(assign(digests, fraction, seed).values()) <= {"train", "validation"}


def test_each_class_gets_its_share():
    validation = Counter(c for c in "ab" for i in range(2000)
                         if split.subset(files.sha256_bytes(f"{c}{i}".encode()), 0.2, 42) == "validation")
    assert all(0.17 <= validation[c] / 2000 <= 0.23 for c in "ab")


def stored(workdir: Path, rows: list[tuple[str, str, str]]) -> None:
    """An image index of (digest, class, source subset) over one shard holding the images' bytes."""
    shard = f"{paths.IMAGES}/0{shards.SUFFIX}"
    index = []
    with shards.writing(workdir / shard) as out:
        for digest, cls, source_subset in rows:
            member = f"{cls}/{digest}.jpg"
            index.append({"sha256": digest, "class": cls, "source_subset": source_subset, "shard": shard,
                          "member": member, "offset": out.add(member, digest.encode()), "size": len(digest)})
    files.write_csv(workdir / paths.IMAGE_INDEX, pd.DataFrame(index))


@pytest.mark.parametrize("validation", ["source", "draw"])
def test_the_step_writes_each_image_with_its_drawn_or_given_subset(tmp_path, capsys, validation):
    drawn = [(files.sha256_bytes(f"{c}{i}".encode()), c, "") for c in "ab" for i in range(60)]
    # Two images whose source gives them the subset they would not draw.
    given = [(d, c, "train" if split.subset(d, 0.3, 5) == "validation" else "validation")
             for d, c in ((files.sha256_bytes(b"x"), "a"), (files.sha256_bytes(b"y"), "b"))]
    stored(tmp_path, drawn + given)
    params = tmp_path / "params.yaml"  # read as a user's file is (strings from YAML, not literals)
    params.write_text(f"base:\n  seed: 5\nsplit:\n  validation: {validation}\n  validation_fraction: 0.3\n")
    summary = split.run(load_config(params), tmp_path)
    table = pd.read_csv(tmp_path / paths.SPLIT, keep_default_na=False)
    assert table.columns.tolist() == split.COLUMNS
    expected = [split.subset(d, 0.3, 5) if validation == "draw" or not given else given
                for d, _, given in drawn + given]
    assert table["subset"].tolist() == expected
    index = pd.read_csv(tmp_path / paths.IMAGE_INDEX, keep_default_na=False)
    assert table[["sha256", "class", "shard", "member", "offset", "size"]].equals(
        index[["sha256", "class", "shard", "member", "offset", "size"]])
    count = expected.count("validation")
    assert summary == {"step": "split", "images": 122, "classes": 2,
                       "subsets": {"train": 122 - count, "validation": count}}
    said = capsys.readouterr().out
    assert ("split: 2 images in the subset their source gives them, 120 drawn" in said) == (validation == "source")
    assert "subset their source gives" in said or validation == "draw"
    assert "split: 122 images in 2 classes" in said and "warning" not in said


def test_when_the_source_gives_every_subset_none_is_drawn(tmp_path, capsys):
    given = ["train", "validation"] * 150  # counts past 256, which Python does not keep one object for
    stored(tmp_path, [(files.sha256_bytes(f"{i}".encode()), "a", s) for i, s in enumerate(given)])
    split.run(validate({"split": {"validation": "source"}}), tmp_path)
    assert "split: 300 images in the subset their source gives them\n" in capsys.readouterr().out


def test_a_class_left_without_validation_images_is_a_warning(tmp_path, capsys):
    stored(tmp_path, [(files.sha256_bytes(f"{c}{i}".encode()), c, "") for c, n in (("a", 40), ("b", 1))
                      for i in range(n)])
    cfg = validate({"split": {"validation_fraction": 0.5}})
    lonely = "validation" if split.subset(files.sha256_bytes(b"b0"), 0.5, cfg.base.seed) == "train" else "training"
    split.run(cfg, tmp_path)
    assert f"split: warning: 1 classes have no {lonely} images: b" in capsys.readouterr().out


def test_a_shard_cut_short_or_missing_is_a_clear_error(tmp_path):
    stored(tmp_path, [(files.sha256_bytes(f"a{i}".encode()), "a", "") for i in range(4)])
    shard = tmp_path / paths.IMAGES / f"0{shards.SUFFIX}"
    index = pd.read_csv(tmp_path / paths.IMAGE_INDEX)
    end = int(index["offset"].iloc[-1]) + int(index["size"].iloc[-1])  # where the last image ends
    with open(shard, "r+b") as data:
        data.truncate(end)  # the tar's closing blocks gone, every image whole: still usable
    split.run(validate({}), tmp_path)
    before = (tmp_path / paths.SPLIT).read_bytes()
    with open(shard, "r+b") as data:
        data.truncate(end - 1)  # the last image's last byte gone
    with pytest.raises(StepError, match=r"1 shards in data/images/index.csv are missing or cut short, e.g. "
                                        r"data/images/0.tar; rerun download"):
        split.run(validate({}), tmp_path)
    shard.unlink()
    with pytest.raises(StepError, match="missing or cut short"):
        split.run(validate({}), tmp_path)
    assert (tmp_path / paths.SPLIT).read_bytes() == before  # what was there stays, nothing half written
    (tmp_path / paths.IMAGE_INDEX).unlink()
    with pytest.raises(StepError, match=r"missing .*index.csv: run the download step first"):
        split.run(validate({}), tmp_path)
