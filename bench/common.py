"""Helpers shared by the benchmarks: a throwaway project copy, telemetry off."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # img2dataset imports albumentations, which asks PyPI for news
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_copy(target: Path, overrides: dict | None = None) -> Path:
    """The tracked project files in `target`, as a git repo, with the demo source on a free port."""
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if not name.startswith(("tests/", "bench/", "docs/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"]["url_list_endpoint"] = (
        f"http://127.0.0.1:{free_port()}/api/text/imagenet.synset.geturls?wnid={{wnid}}")
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=bench@localhost",
                                                   "commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=target, check=True, env=ENV)
    return target
