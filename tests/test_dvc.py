"""dvc.yaml is the same pipeline as the flow, and `dvc repro` runs it for real."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port, make_project, run, tiny_params
from tasks.step import STEP_NAMES, load_step
from tasks.storage import files

DVC = [sys.executable, "-m", "dvc"]
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "logs", "summaries")


def _names(entries) -> list[str]:
    return sorted(next(iter(e)) if isinstance(e, dict) else e for e in entries or [])


@pytest.mark.parametrize("name", STEP_NAMES)
def test_dvc_stage_declares_what_the_step_reads_and_writes(name):
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    step = load_step(name).STEP
    code = [p.relative_to(REPO).as_posix() for p in step.code_files()]
    assert stage["cmd"] == f"alexnet stage {name}"
    assert _names(stage["deps"]) == sorted([*step.deps, *code]), "dvc.yaml deps != data deps + code closure"
    assert _names(stage["params"]) == sorted(step.params)
    assert _names(stage.get("outs")) == sorted([*step.outs, step.record]), "outs != the step's outputs + its record"
    assert _names(stage.get("metrics")) == sorted(step.metrics)
    assert _names(stage.get("plots")) == sorted(step.plots)
    outputs = [entry for kind in ("outs", "metrics", "plots") for entry in stage.get(kind) or []]
    assert all(isinstance(e, dict) and next(iter(e.values())).get("persist") for e in outputs), \
        "every output persists: the step replaces it, DVC does not delete it first"


def test_dvc_stages_are_the_six_steps_in_order():
    assert tuple(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]) == STEP_NAMES


def test_a_failed_dvc_command_in_a_flow_run_reports_dvcs_own_message(tmp_path):
    from tasks.params import load_config
    from tasks.running import versioning
    from tasks.step import StepError

    project = make_project(tmp_path, tiny_params(free_port()))
    # Nothing has run: the outputs DVC is to record are not there.
    with pytest.raises(StepError, match=r"dvc commit failed: ERROR: failed to commit fetch_urls - .* does not exist"):
        versioning.commit(load_config(project / "params.yaml"), project)


def test_a_flow_run_does_not_wait_for_a_dvc_command_that_has_the_repository(tmp_path):
    """A `dvc repro` holding DVC's lock may be waiting for the flow run's own: the commit is skipped with a note."""
    import zc.lockfile

    from tasks.params import load_config
    from tasks.running import versioning

    project = make_project(tmp_path, tiny_params(free_port()))
    (project / ".dvc" / "tmp").mkdir(exist_ok=True)
    held = zc.lockfile.LockFile(str(project / ".dvc" / "tmp" / "lock"))  # DVC's repository lock, as dvc takes it
    try:
        result = versioning.commit(load_config(project / "params.yaml"), project, {"fetch_urls": "k"})
    finally:
        held.close()
    assert result["committed"] == [] and result["note"].startswith("DVC is busy")
    assert not (project / versioning.SYNCED).exists()  # nothing recorded as in sync


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A committed project after its first `dvc repro`, and that command's output."""
    project = make_project(tmp_path_factory.mktemp("dvc"), tiny_params(free_port()))
    project_output = run([*DVC, "repro"], project).stdout
    return project, project_output


def outputs(project: Path) -> dict[str, str]:
    """Digest of every file under the pipeline's output folders."""
    return {p.relative_to(project).as_posix(): files.sha256_file(p)
            for folder in OUTPUT_FOLDERS for p in sorted((project / folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dvc_repro_runs_six_stages_then_nothing(reproduced):
    project, first = reproduced
    ran = [line for line in first.splitlines() if line.startswith("Running stage")]
    assert ran == [f"Running stage '{name}':" for name in STEP_NAMES]
    for output in ("models/alexnet.h5", "metrics/eval.json", "plots/confusion.png", "data/manifest.csv"):
        assert (project / output).is_file()
    second = run([*DVC, "repro"], project)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date." in second.stdout
    assert run([*DVC, "status"], project).stdout.strip() == "Data and pipelines are up to date."
    # Outputs are git-ignored, so git sees only dvc.lock.
    assert run(["git", "status", "--porcelain"], project).stdout.split() == ["??", "dvc.lock"]
    # DVC tracks shards and indexes, not an image per file.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    tracked = sum(out.get("nfiles", 1) for stage in lock["stages"].values() for out in stage.get("outs", [])
                  if out["path"].startswith("data/"))
    images = len((project / "data" / "images" / "index.csv").read_text().splitlines()) - 1
    # Two URL lists, a download shard with its index and class names, the manifest, the split, a canonical
    # shard per subset with their index and colour statistics.
    assert tracked == 11 and images == 48, (tracked, images)


@pytest.mark.slow
@pytest.mark.parametrize("params_file", ["params-paper.yaml", "params-tutorial.yaml"])
def test_every_shipped_params_file_gives_dvc_every_section_its_stages_declare(reproduced, params_file):
    """`cp params-paper.yaml params.yaml && dvc repro`, as the README says: no stage may find its params missing."""
    project, _ = reproduced
    shipped = project / "params.yaml"
    before = shipped.read_text()
    try:
        shutil.copy(REPO / params_file, shipped)
        status = json.loads(run([*DVC, "status", "--json"], project).stdout)
    finally:
        shipped.write_text(before)
    params = {key: state for entries in status.values() for entry in entries if isinstance(entry, dict)
              for key, state in entry.get("changed deps", {}).get("params.yaml", {}).items()}
    assert params and "deleted" not in params.values(), params


@pytest.mark.slow
def test_experiments_metrics_and_plots(reproduced, tmp_path):
    project, _ = reproduced
    run(["git", "add", "dvc.lock"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "baseline"], project)
    before = json.loads((project / "metrics" / "eval.json").read_text())

    exp = run([*DVC, "exp", "run", "-S", "train.epochs=3"], project).stdout
    assert "Running stage 'train'" in exp and "Running stage 'split'" not in exp
    assert len((project / "metrics" / "history.csv").read_text().splitlines()) == 4
    table = json.loads(run([*DVC, "exp", "show", "--json"], project).stdout)
    experiments = [e for rev in table for e in (rev.get("experiments") or [])]
    assert experiments, table
    exp_metrics = experiments[0]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]
    params = experiments[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["train"]["epochs"] == 3 and "accuracy" in exp_metrics

    diff = json.loads(run([*DVC, "metrics", "diff", "--all", "--json"], project).stdout)  # unchanged ones too
    assert diff["metrics/eval.json"]["accuracy"]["old"] == before["accuracy"]

    out = tmp_path / "plots"
    run([*DVC, "plots", "show", "-o", str(out)], project)
    page = (out / "index.html").read_text()
    for name in ("loss", "accuracy", "val_accuracy", "confusion.csv", "predictions.png", "augmentation.png"):
        assert name in page, name


@pytest.mark.slow
def test_a_stage_refused_for_a_bad_param_keeps_the_last_outputs(reproduced):
    """DVC leaves a stage's outputs in place (persist), and the stage refuses the value before writing."""
    project, _ = reproduced
    before, params = outputs(project), (project / "params.yaml").read_text()
    try:
        done = run([*DVC, "exp", "run", "-S", "train.epochs=-1"], project, check=False)
    finally:
        (project / "params.yaml").write_text(params)
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in said
    assert "alexnet: params.yaml: train.epochs: Input should be greater than or equal to 1 (got -1)" in said
    assert outputs(project) == before


@pytest.mark.slow
def test_push_and_pull_through_a_local_remote(reproduced, tmp_path):
    project, _ = reproduced
    run([*DVC, "remote", "add", "--force", "store", str(tmp_path / "store")], project)
    _round_trip(project, ["--remote", "store"])


@pytest.mark.slow
def test_push_and_pull_through_an_s3_compatible_remote(reproduced, tmp_path):
    """A real S3 API (moto's server) on loopback; credentials stay in .dvc/config.local."""
    import boto3

    project, _ = reproduced
    from conftest import Service

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = Service(["moto_server", "-H", "127.0.0.1", "-p", str(port)], tmp_path, dict(os.environ),
                     tmp_path / "moto.log")
    try:
        server.wait_until(lambda: _answers(endpoint), 60, "moto_server")
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).create_bucket(
            Bucket="alexnet")
        run([*DVC, "remote", "add", "--force", "s3store", "s3://alexnet/dvc"], project)
        run([*DVC, "remote", "modify", "s3store", "endpointurl", endpoint], project)
        run([*DVC, "remote", "modify", "--local", "s3store", "access_key_id", "testing"], project)
        run([*DVC, "remote", "modify", "--local", "s3store", "secret_access_key", "testing"], project)
        _round_trip(project, ["--remote", "s3store"])
        listed = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).list_objects_v2(
            Bucket="alexnet", Prefix="dvc/")
        assert listed["KeyCount"] > 0
    finally:
        server.stop()


def _answers(url: str) -> bool:
    import requests

    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        return False


def _round_trip(project: Path, remote: list[str]) -> None:
    """Push, delete the outputs and the cache, pull, and get the same files back."""
    before = outputs(project)
    assert "models/alexnet.h5" in before
    run([*DVC, "push", *remote], project)
    for folder in OUTPUT_FOLDERS:
        shutil.rmtree(project / folder, ignore_errors=True)
    shutil.rmtree(project / ".dvc" / "cache")
    assert "deleted" in run([*DVC, "status"], project).stdout
    run([*DVC, "pull", *remote], project)
    assert outputs(project) == before
    assert run([*DVC, "status"], project).stdout.strip() == "Data and pipelines are up to date."


def test_the_dvc_line_names_the_steps_left_uncommitted_on_every_run_with_overrides(tmp_path):
    """A rerun with the same overrides is not "in sync" with DVC: its steps still differ from params.yaml."""
    from tasks.params import load_config
    from tasks.running import versioning

    project = make_project(tmp_path, tiny_params(free_port()))
    cfg = load_config(project / "params.yaml", ["data.images_per_class=5"])  # every step reads data's outputs
    keys = {name: f"key-{name}" for name in STEP_NAMES}
    for _ in range(2):
        done = versioning.commit(cfg, project, keys)
        assert done["committed"] == [] and done["note"].startswith(
            "fetch_urls, download, split, augment, train, evaluate ran with params that differ from params.yaml")
