"""The `alexnet` command as a newcomer meets it: a mistake or the machine's state ends it with one line
naming the path or key, nothing is retried that a retry cannot fix, and no start-up chatter shows."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, free_port, run, tiny_params
from tasks.acquire.archives import ArchiveError
from tasks.acquire.sources import SourceError, Unreachable
from tasks.errors import StepError
from tasks.params import ConfigError

NOISE = ("Traceback", "Retry", "telemetry", "absl", "oneDNN", "cuInit", "cuda", "httpx", "Starting temporary server",
         "NotReady")


def write_params(folder: Path, params: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def bees_without_wasps(folder: Path) -> Path:
    """A project whose params name two classes of a local folder that holds only one of them."""
    import cv2
    import numpy as np

    (folder / "photos" / "bees").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / "photos" / "bees" / f"{i}.jpg"), np.full((32, 32, 3), 40 * i, np.uint8))
    classes = {"bees": {}, "wasps": {}}
    return write_params(folder, {"data": {"source": "folder", "folder": "photos", "classes": classes}})


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_missing_class_folder_ends_the_run_in_one_line_without_retries_tracebacks_or_start_up_noise(tmp_path):
    project = bees_without_wasps(tmp_path)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PREFECT_SERVER_ANALYTICS_ENABLED", "TF_CPP_MIN_LOG_LEVEL")}
    # Were the temporary server to send telemetry, it would go to a dead proxy on loopback, and say so.
    env.update(HTTPS_PROXY="http://127.0.0.2:9", HTTP_PROXY="http://127.0.0.2:9", NO_PROXY="127.0.0.1,localhost")
    done = run(["alexnet", "run"], project, check=False, env=env)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert last_line(done.stderr) == (f"alexnet run: image folder not found: no images in a folder named wasps "
                                      f"under {project / 'photos'}")
    for noise in NOISE:
        assert noise not in said, f"{noise!r} in:\n{said}"
    assert not (project / "data").exists()


def test_debug_shows_the_traceback_before_the_line(tmp_path):
    project = bees_without_wasps(tmp_path)
    quiet = run(["alexnet", "stage", "fetch_urls"], project, check=False)
    debug = run(["alexnet", "stage", "fetch_urls"], project, check=False, env={**os.environ, "ALEXNET_DEBUG": "1"})
    line = f"alexnet stage fetch_urls: image folder not found: no images in a folder named wasps under {project}/photos"
    assert quiet.returncode == debug.returncode == 1
    assert quiet.stderr.strip() == line
    assert "Traceback (most recent call last)" in debug.stderr and last_line(debug.stderr) == line


def test_only_failures_a_retry_can_fix_are_retried():
    from prefect.states import Failed

    from tasks.fetch_urls import fetch_urls_task
    from tasks.split import split_task

    def retried(task, exc: BaseException) -> bool:
        return task.retries > 0 and task.retry_condition_fn(task, None, Failed(data=exc))

    assert retried(fetch_urls_task, Unreachable("could not fetch the URL list: connection refused"))
    assert retried(fetch_urls_task, RuntimeError("unforeseen"))
    for mistake in (SourceError("image folder not found"), ArchiveError("not a readable archive"),
                    ConfigError("params.yaml: train.epochs"), StepError("too few images"),
                    OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EROFS, "Read-only file system")):
        assert not retried(fetch_urls_task, mistake), mistake
    assert not retried(split_task, Unreachable("no network step: no retries"))


def _model_files(project: Path) -> None:
    (project / "models").mkdir()
    (project / "models" / "alexnet.h5").write_text("not a model")
    (project / "models" / "alexnet.json").write_text("{}")


@pytest.mark.parametrize("kind, setup, command, line", [
    ("a list the step needs", lambda p: None, ["stage", "download"],
     "alexnet stage download: missing URL list {p}/data/urls/bikes.txt: run the fetch_urls step first"),
    ("a missing archive", lambda p: write_params(p, {"data": {"source": "archive", "archive": "photos.tgz"}}),
     ["stage", "fetch_urls"], "alexnet stage fetch_urls: the archive: file not found: {p}/photos.tgz"),
    ("an unreadable archive", lambda p: [write_params(p, {"data": {"source": "archive", "archive": "photos.tgz"}}),
                                         (p / "photos.tgz").write_text("not an archive")],
     ["stage", "fetch_urls"], "alexnet stage fetch_urls: photos.tgz: not a readable .tar, .tar.gz or .zip archive"),
    ("an unreadable model", _model_files, ["predict", "README.md"],
     "alexnet predict: cannot read the model models/alexnet.h5 or its card: Unable to synchronously open file"),
    ("a missing index", lambda p: None, ["images", "--class", "ships"],
     "alexnet images: missing {p}/data/images/index.csv: run the download step first"),
])
def test_a_mistake_ends_the_command_with_one_line_naming_it(tmp_path, kind, setup, command, line):
    project = write_params(tmp_path, tiny_params(free_port()))
    shutil.copy(REPO / "README.md", project)
    setup(project)
    done = run(["alexnet", *command], project, check=False)
    assert done.returncode == 1, kind
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(line.format(p=project)), \
        f"{kind}:\n{done.stderr}"


def _unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"]).returncode == 0
    except FileNotFoundError:
        return False


needs_mounts = pytest.mark.skipif(not _unshare(), reason="needs `unshare` to mount a small or read-only disk")


def in_private_mounts(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`script` in bash as root of its own mount namespace, where it mounts disks only it sees."""
    return run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-euc", script], cwd, check=False)


def stored(project: Path) -> dict[str, object]:
    """The download's outputs: shards and index as bytes, the manifest but for its timings."""
    found: dict[str, object] = {p.relative_to(project).as_posix(): p.read_bytes()
                                for p in sorted((project / "data" / "images").iterdir())}
    manifest = pd.read_csv(project / "data" / "manifest.csv", keep_default_na=False)
    found["manifest"] = manifest.drop(columns="elapsed_s").to_dict("records")
    return found


@pytest.mark.slow
@needs_mounts
def test_a_full_disk_stops_the_download_with_one_line_and_the_rerun_ends_as_an_uninterrupted_one(tmp_path):
    params = tiny_params(free_port())
    reference = write_params(tmp_path / "reference", params)
    for step in ("fetch_urls", "download"):
        run(["alexnet", "stage", step], reference)
    project = write_params(tmp_path / "project", params)
    (project / "data").mkdir()
    # data/ on a small disk, 300 KB of it left once the URL lists are in: too little for the images.
    done = in_private_mounts("""
        mount -t tmpfs -o size=$((4 * $(du -sk ../reference/data | cut -f1)))k tmpfs data
        alexnet stage fetch_urls > /dev/null
        dd if=/dev/zero of=data/filler bs=1k count=$(($(df -k --output=avail data | tail -1) - 300)) status=none
        if alexnet stage download > full.out 2> full.err; then exit 3; fi
        find data -name '*.tmp-*' > leftovers
        rm data/filler
        alexnet stage download > /dev/null
        mkdir ../after && cp -a data ../after/
    """, project)
    assert done.returncode == 0, done.stdout + done.stderr
    said = (project / "full.err").read_text()
    assert last_line(said).startswith("alexnet stage download: no space left on device (") and \
        f"): {project}/data/images/" in said and said.rstrip().endswith(": free some space there and run the "
                                                                          "same command again"), said
    assert "Traceback" not in said and (project / "leftovers").read_text() == ""
    assert stored(tmp_path / "after") == stored(reference)


@needs_mounts
def test_a_read_only_folder_stops_the_step_with_one_line(tmp_path):
    project = bees_without_wasps(tmp_path)
    (project / "photos" / "wasps").mkdir()
    shutil.copy(project / "photos" / "bees" / "0.jpg", project / "photos" / "wasps")
    (project / "data").mkdir()
    done = in_private_mounts("mount -t tmpfs -o ro tmpfs data; alexnet stage fetch_urls", project)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"alexnet stage fetch_urls: read-only file system: {project}/data/")
    assert done.stderr.strip().endswith(": run in a writable folder and run the same command again")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_filter_drops_tensorflows_start_up_lines_and_keeps_its_warnings_and_errors(tmp_path):
    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
             "I0000 00:00:1796404005.231008   13123 port.cc:153] oneDNN custom operations are on.\n",
             "I0000 00:00:1796404005.232532   13123 cudart_stub.cc:31] Could not find cuda drivers on your machine\n",
             "E0000 00:00:1796404089.638127   14834 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
             "W0000 00:00:1796404089.638127   14834 some.cc:1] a warning that matters\n",
             "E0000 00:00:1796404089.638127   14834 other.cc:2] an error that matters\n",
             "a line of the program's own\n"]
    code = ("import os, sys\nfrom tasks.running import console\nwith console.tensorflow_start_up():\n"
            f"    for line in {lines!r}:\n        os.write(2, line.encode())\n")
    done = run([sys.executable, "-c", code], tmp_path)
    assert done.stderr.splitlines(keepends=True) == lines[4:]
    with_driver = code.replace("Could not find cuda drivers", "Loaded the CUDA driver")
    assert "failed call to cuInit" in run([sys.executable, "-c", with_driver], tmp_path).stderr


def test_a_workers_flow_run_process_loads_the_flow_without_tensorflows_start_up_lines(tmp_path):
    # `prefect worker start` and `alexnet serve` run each flow run in a process that imports flows/full.py first.
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = run([sys.executable, "-c", "import flows.full"], REPO, env=env)
    assert "tensorflow" in run([sys.executable, "-c", "import flows.full, sys; print(sorted(sys.modules))"],
                               REPO, env=env).stdout
    for noise in NOISE:
        assert noise not in done.stderr, f"{noise!r} in:\n{done.stderr}"


def test_commands_that_need_neither_tensorflow_nor_prefect_do_not_import_them(tmp_path):
    code = ("import sys\nfrom flows import cli\n"
            "for argv in (['images', '--limit', '5'], ['--version'], ['--help']):\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'prefect') if m in sys.modules))\n")
    done = run([sys.executable, "-c", code], tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "[]"
