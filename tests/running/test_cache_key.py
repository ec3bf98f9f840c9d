"""The Prefect cache key: exactly what a step reads, by content."""

from __future__ import annotations

import pytest

from tasks import download, fetch_urls, split, train
from tasks.params import validate
from tasks.running.cache import cache_key, intact_record, write_record
from tasks.step import STEP_NAMES, load_step


# The steps whose results a knob can change, one knob per params section: written out here, not read from
# the steps' declarations, so a section dropped from a step's key shows.
CHANGES = {
    ("base", "seed", 7): {"split", "augment", "train"},  # augment: the preview's draws
    ("data", "images_per_class", 5): {"fetch_urls", "download"},
    ("download", "min_side", 16): {"download"},
    ("split", "validation_fraction", 0.3): {"split"},
    ("augment", "crop_size", 99): {"augment", "train", "evaluate"},
    ("model", "dropout", 0.3): {"train"},
    ("train", "epochs", 3): {"train"},
    ("evaluate", "grid_images", 3): {"evaluate"},
}


@pytest.mark.parametrize(("section", "knob", "value"), CHANGES, ids=[f"{s}.{k}" for s, k, _ in CHANGES])
def test_a_knob_changes_the_keys_of_the_steps_it_can_change_only(section, knob, value, tmp_path):
    base, changed = validate({}), validate({section: {knob: value}})
    assert getattr(getattr(changed, section), knob) != getattr(getattr(base, section), knob)
    keyed = {name for name in STEP_NAMES
             if cache_key(load_step(name).STEP, base, tmp_path) != cache_key(load_step(name).STEP, changed, tmp_path)}
    assert keyed == CHANGES[section, knob, value]


def test_input_files_count_by_content_not_by_name_or_time(tmp_path):
    cfg = validate({})
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("a\n")
    first = cache_key(split.STEP, cfg, tmp_path)
    manifest.write_text("b\n")
    assert cache_key(split.STEP, cfg, tmp_path) != first
    manifest.write_text("a\n")  # same content again, new modification time
    assert cache_key(split.STEP, cfg, tmp_path) == first


def test_local_image_sources_are_part_of_the_keys(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        (tmp_path / "photos" / cls / "1.jpg").write_bytes(b"one")
    cfg = validate({"data": {"source": "folder", "folder": "photos", "classes": {"cats": {}, "dogs": {}}}})
    before = {s.name: cache_key(s, cfg, tmp_path) for s in (fetch_urls.STEP, download.STEP)}
    (tmp_path / "photos" / "dogs" / "1.jpg").write_bytes(b"another photo")
    after = {s.name: cache_key(s, cfg, tmp_path) for s in (fetch_urls.STEP, download.STEP)}
    assert all(before[name] != after[name] for name in before)


def test_outputs_are_honoured_only_while_they_are_what_the_run_made(tmp_path):
    cfg = validate({})
    key = cache_key(train.STEP, cfg, tmp_path)
    assert intact_record(train.STEP, tmp_path, key) is None  # nothing recorded yet
    for out in train.STEP.all_outputs:
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text(out)
    write_record(train.STEP, tmp_path, key, {"epochs": 2}, "a test")
    assert intact_record(train.STEP, tmp_path, key) is not None
    assert intact_record(train.STEP, tmp_path, "another key") is None  # made by a run with other inputs
    (tmp_path / "models" / "alexnet.h5").write_text("another model")
    assert intact_record(train.STEP, tmp_path, key) is None
    (tmp_path / "models" / "alexnet.h5").unlink()
    assert intact_record(train.STEP, tmp_path, key) is None


@pytest.mark.parametrize("name", STEP_NAMES)
def test_code_closure_holds_the_step_module_and_its_project_imports(name):
    step = load_step(name).STEP
    files = {p.name for p in step.code_files()}
    assert f"{name}.py" in files and "step.py" in files and "config.py" in files
    assert ("mirror.py" in files) == step.network  # network steps may start the demo mirror
