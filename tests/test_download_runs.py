"""The download step as processes run it: killed and resumed, and chunked over Prefect task runners."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from conftest import API, run
from hostile import HostileServer
from tasks import download, paths
from tasks.acquire import downloader
from tasks.params import load_config
from tasks.storage import files

pytestmark = pytest.mark.slow

SETTINGS = {
    "data": {"classes": {"a": {"wnid": "n00000001"}, "b": {"wnid": "n00000002"}}, "images_per_class": 30,
             "embedded_mirror": False},
    "download": {"workers": 4, "chunk_size": 5, "timeout_s": 3, "read_timeout_s": 1, "backoff_s": 0.01,
                 "min_images_per_class": 5, "min_side": 16},
}


def project(folder: Path, host: HostileServer, **download_params) -> Path:
    """A working directory with params and URL lists on `host`: slow good images and some bad ones."""
    params = yaml.safe_load(yaml.safe_dump(SETTINGS))
    params["download"].update(download_params)
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    bad = [host.url(p) for p in ("/missing.jpg", "/truncated.jpg", "/page.jpg", "/dup-a.jpg", "/dup-b.jpg")]
    lists = {"a": [host.url(f"/slow/{i}.jpg") for i in range(20)] + bad + [host.url(f"/slow/{i}.jpg") for i in range(20, 30)],
             "b": [host.url(f"/slow/{i}.jpg") for i in range(100, 130)]}
    for cls, urls in lists.items():
        files.write_text(folder / paths.URLS / f"{cls}.txt", "\n".join(urls) + "\n")
    return folder


def chunk_records(folder: Path) -> list[Path]:
    return [p for p in (folder / downloader.RECORDS_DIR).rglob("*.csv") if p.name != "carried.csv"]


def start_and_kill(folder: Path, records: int) -> None:
    """Start `alexnet stage download`, SIGKILL it once `records` chunks are recorded, mid-run."""
    before = set(chunk_records(folder))
    process = subprocess.Popen(["alexnet", "stage", "download"], cwd=folder, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(set(chunk_records(folder)) - before) < records:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no chunk was recorded"
        time.sleep(0.01)
    process.kill()
    process.wait()
    gone = time.monotonic() + 10
    while workers_of(folder) and time.monotonic() < gone:  # worker processes end with the run
        time.sleep(0.05)
    assert not workers_of(folder), "worker processes of the killed run are still running"
    assert not (folder / paths.MANIFEST).exists(), "killed too late: the run had finished"


def workers_of(folder: Path) -> list[psutil.Process]:
    """Processes still working in `folder` (a killed run's download workers, say)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if Path(proc.cwd()) == folder and proc.pid != os.getpid():
                found.append(proc)
    return found


def snapshot(folder: Path) -> tuple[dict[str, str], pd.DataFrame]:
    """Every file in data/images (the shards and the image index) by content, and the manifest."""
    images = {p.relative_to(folder).as_posix(): files.sha256_file(p) for p in (folder / paths.IMAGES).rglob("*")
              if p.is_file()}
    manifest = pd.read_csv(folder / paths.MANIFEST, keep_default_na=False)
    return images, manifest.drop(columns="elapsed_s")  # wall times differ from run to run


@pytest.mark.parametrize("runner", ["thread", "process"])
def test_a_run_killed_with_sigkill_resumes_to_exactly_the_dataset_of_an_uninterrupted_run(tmp_path, runner):
    with HostileServer() as host:
        host.slow_s = 0.1
        clean = project(tmp_path / "clean", host)
        run(["alexnet", "stage", "download"], clean)
        uninterrupted = sum(host.hits.values())
        killed = project(tmp_path / "killed", host, task_runner=runner, processes=2)
        start_and_kill(killed, records=1)
        start_and_kill(killed, records=2)  # a resumed run, killed again
        run(["alexnet", "stage", "download"], killed)
        refetched = sum(host.hits.values()) - 2 * uninterrupted
    killed_images, killed_manifest = snapshot(killed)
    clean_images, clean_manifest = snapshot(clean)
    assert killed_images == clean_images  # the same shards, byte for byte, and the same index
    assert len(pd.read_csv(clean / paths.IMAGE_INDEX)) == 60 and len(clean_images) == 13 + 2  # 5 URLs a chunk
    pd.testing.assert_frame_equal(killed_manifest, clean_manifest)
    leftovers = [p for p in killed.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    # Recorded chunks were not fetched again: only the chunks in flight at each kill
    # (two of five URLs) and the three failed URLs, which every run tries again.
    assert refetched <= 2 * (2 * SETTINGS["download"]["chunk_size"] + 3)


SCRIPT = """
import json
from prefect import flow
from tasks.params import load_config
from tasks.download import download_task

@flow(name="download-only")
def download_only():
    return download_task(load_config())

if __name__ == "__main__":  # Dask's worker processes import this file
    print("SUMMARY " + json.dumps(download_only()))
"""


def task_runs(api: str, flow_run_name: str) -> list[dict]:
    flows = API.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [flow_run_name]}}},
                     timeout=10).json()
    body = {"flow_runs": {"id": {"any_": [f["id"] for f in flows]}}}
    return API.post(f"{api}/task_runs/filter", json=body, timeout=10).json()


@pytest.mark.parametrize("runner", ["thread", "process", "dask"])
def test_chunks_are_download_chunk_tasks_on_the_configured_task_runner(tmp_path, prefect_server, runner):
    with HostileServer() as host:
        host.slow_s = 0.0
        folder = project(tmp_path / runner, host, task_runner=runner, dask_workers=2, processes=2)
        (folder / "only.py").write_text(SCRIPT)
        env = {**prefect_server.env, "PREFECT_HOME": str(tmp_path / "home")}
        done = run(["python", "only.py"], folder, env=env, timeout=300)
        reference = project(tmp_path / "reference", host)
        run(["alexnet", "stage", "download"], reference)
    summary = json.loads(done.stdout.split("SUMMARY ", 1)[1])
    assert summary["ok"] == {"a": 30, "b": 30}
    flow_run = next(line for line in (done.stdout + done.stderr).splitlines() if "Beginning flow run" in line)
    name = flow_run.split("'")[1]
    runs = task_runs(prefect_server.api, name)
    names = sorted(r["name"].rsplit("-", 1)[0] for r in runs)
    chunks = 7 + 6  # a: 35 URLs, b: 30 URLs, 5 per chunk
    assert names == ["download"] + ["download_chunk"] * chunks
    assert {r["state"]["name"] for r in runs} == {"Completed"}
    assert summary["processes"] == (1 if runner == "thread" else 2)  # the chunks ran on both workers
    if runner == "dask":
        assert "LocalCluster" in done.stdout + done.stderr
    pd.testing.assert_frame_equal(snapshot(folder)[1], snapshot(reference)[1])


@pytest.mark.parametrize("runner", ["thread", "process"])
def test_without_prefect_chunks_run_on_threads_or_worker_processes_alike(tmp_path, runner):
    with HostileServer() as host:
        host.slow_s = 0.0
        folder = project(tmp_path / runner, host, task_runner=runner, processes=2)
        reference = project(tmp_path / "reference", host)
        summary = download.run(load_config(folder / "params.yaml"), folder)
        run(["alexnet", "stage", "download"], reference)
    assert summary["processes"] == (1 if runner == "thread" else 2)
    assert summary["ok"] == {"a": 30, "b": 30}
    (images, manifest), (reference_images, reference_manifest) = snapshot(folder), snapshot(reference)
    assert images == reference_images
    pd.testing.assert_frame_equal(manifest, reference_manifest)
