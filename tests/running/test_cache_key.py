"""The Prefect cache key: exactly what a step reads, by content."""

from __future__ import annotations

import pytest

from tasks import download, fetch_urls, split, train
from tasks.params import validate
from tasks.running.cache import cache_key, outputs_intact, record_outputs
from tasks.step import STEP_NAMES, load_step


def test_a_params_section_changes_the_keys_of_the_steps_that_read_it_only(tmp_path):
    base = validate({})
    changed = validate({"train": {"epochs": 3}})
    for name in STEP_NAMES:
        step = load_step(name).STEP
        same = cache_key(step, base, tmp_path) == cache_key(step, changed, tmp_path)
        assert same == ("train" not in step.params), name


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
    assert not outputs_intact(train.STEP, tmp_path, key)  # nothing recorded yet
    for out in train.STEP.all_outputs:
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text(out)
    record_outputs(train.STEP, tmp_path, key)
    assert outputs_intact(train.STEP, tmp_path, key)
    (tmp_path / "models" / "alexnet.h5").write_text("another model")
    assert not outputs_intact(train.STEP, tmp_path, key)
    (tmp_path / "models" / "alexnet.h5").unlink()
    assert not outputs_intact(train.STEP, tmp_path, key)


@pytest.mark.parametrize("name", STEP_NAMES)
def test_code_closure_holds_the_step_module_and_its_project_imports(name):
    step = load_step(name).STEP
    files = {p.name for p in step.code_files()}
    assert f"{name}.py" in files and "step.py" in files and "config.py" in files
    assert ("mirror.py" in files) == step.network  # network steps may start the demo mirror
