"""The README and the docs pages it links, as a contract: their commands run as written on the
demo data and end as the text says, and the synopsis of `alexnet` is what `--help` gives."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port, make_project, run
from flows.cli import parser

# Commands the docs show that do not run here, and where they are tested instead.
ELSEWHERE = {
    "make test": "the test suite itself",
    ". .venv/bin/activate": "the tests run in the project's environment already",
    "prefect ": "a Prefect server and its workers: tests/test_deployment.py, tests/test_worker.py",
    "export PREFECT_": "a team server's settings (docs/team.md): tests/test_deployment.py",
    "alexnet serve": "serves until stopped: tests/test_deployment.py",
    "alexnet run --params params-paper.yaml": "the paper's scale reads the ILSVRC-2012 archives",
    "cp params-paper.yaml params.yaml": "the paper's scale reads the ILSVRC-2012 archives",
    "dvc remote ": "a remote of the reader's own: tests/test_dvc.py pushes to a folder and to an S3 API",
    "dvc push": "a remote of the reader's own: tests/test_dvc.py pushes to a folder and to an S3 API",
}
ERROR_LINE = re.compile(r"^alexnet[\w ]*: [^:]+: ")  # how a command that fails says why: `alexnet CMD: what: why`


@dataclass
class Example:
    page: str
    line: int
    command: str
    shown: list[str] = field(default_factory=list)  # the output the page shows, if any

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.command}"


def pages() -> list[Path]:
    """The README and the docs pages it links, in the order it links them."""
    linked = re.findall(r"\]\((docs/[\w-]+\.md)\)", (REPO / "README.md").read_text())
    return [REPO / "README.md", *(REPO / name for name in dict.fromkeys(linked))]


def examples(page: Path) -> list[Example]:
    """Commands of the page's `sh` blocks (one a line) and `console` blocks (`$ ` lines, then their output)."""
    found: list[Example] = []
    kind = None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            kind = None if kind else line[3:].strip() or "text"
        elif kind == "sh" and line.strip() and not line.startswith("#"):
            found.append(Example(page.name, number, re.sub(r"\s+# .*$", "", line).strip()))
        elif kind == "console" and line.startswith("$ "):
            found.append(Example(page.name, number, line[2:].strip()))
        elif kind == "console" and found:
            found[-1].shown.append(line)
    return found


def masked(line: str) -> str:
    """A line as far as the text can promise it: numbers vary, spacing aligns columns."""
    return " ".join(re.sub(r"\d+(\.\d+)?", "0", line).split())


def demo_command() -> str:
    """What `make demo` runs once the environment is installed: the Makefile's recipe."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    return " && ".join(line.strip() for line in recipe.group(1).splitlines())


def test_the_docs_show_commands_to_run():
    every = [e for page in pages() for e in examples(page)]
    assert {"README.md", "data.md"} <= {e.page for e in every}
    assert any(e.command.startswith("alexnet images --digest") for e in every)


@pytest.mark.slow
def test_every_command_in_the_readme_and_its_docs_runs_as_the_text_says(tmp_path):
    """Like a reader: the demo first, then each page's commands in order, in one project."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the demo as shipped, on a free port
    params["data"]["url_list_endpoint"] = f"http://127.0.0.1:{free_port()}/api/text/imagenet.synset.geturls?wnid={{wnid}}"
    project = make_project(tmp_path, params)
    env = {**os.environ, "GIT_AUTHOR_NAME": "reader", "GIT_AUTHOR_EMAIL": "reader@localhost",
           "GIT_COMMITTER_NAME": "reader", "GIT_COMMITTER_EMAIL": "reader@localhost"}
    ran, done = [], None
    for example in (e for page in pages() for e in examples(page)):
        if any(example.command.startswith(prefix) for prefix in ELSEWHERE):
            continue
        command = demo_command() if example.command == "make demo" else example.command
        if not (ran and ran[-1] == example.command and example.shown):  # else: the output of what just ran
            done = subprocess.run(["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True,
                                  timeout=900)
        said = f"{example}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        fails = any(ERROR_LINE.match(line) for line in example.shown)
        assert (done.returncode != 0) == fails, f"exit status {done.returncode}: {said}"
        got = {masked(line) for line in (done.stdout + done.stderr).splitlines()}
        for line in example.shown:
            assert line.strip() == "..." or masked(line) in got, f"not in the output: {line!r}\n{said}"
        assert "Traceback" not in done.stderr, said
        ran.append(example.command)
    assert "make demo" in ran and any(c.startswith("dvc exp run") for c in ran), ran


def _options(action) -> list[str]:
    return action.option_strings or [action.metavar or action.dest]


def synopsis() -> dict[str, set[str]]:
    """The README's command-line block: per command (or global option), the options and arguments it shows."""
    block = re.search(r"## Command line\n\n```\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL).group(1)
    shown: dict[str, set[str]] = {}
    for line in block.splitlines():
        if line.startswith("alexnet "):
            name = line.split()[1]
        shown.setdefault(name, set()).update(re.findall(r"--?[\w-]+|\b[A-Z]+\b", line))
    return shown


def test_the_readme_synopsis_lists_every_option_of_every_command():
    shown, top = synopsis(), parser()
    commands = next(a for a in top._actions if a.dest == "command").choices
    for name, sub in commands.items():
        assert name in shown, f"alexnet {name} is not in the README's synopsis"
        for action in sub._actions:
            if action.dest != "help":
                assert shown[name] & set(_options(action)), f"alexnet {name}: {_options(action)} not in the README"
        known = {o for a in sub._actions for o in _options(a)}
        extra = {w for w in shown[name] if w.startswith("-")} - known
        assert not extra, f"alexnet {name}: the README shows {extra}, which --help does not"
    for action in top._actions:
        if action.dest not in ("help", "command"):
            assert set(action.option_strings) & set(shown), f"alexnet {action.option_strings} not in the README"


def test_every_argument_has_help():
    top = parser()
    commands = next(a for a in top._actions if a.dest == "command").choices
    for name, sub in [("alexnet", top), *commands.items()]:
        for action in sub._actions:
            assert action.help, f"{name}: {_options(action)} has no help text"


def test_version_is_the_packages():
    from importlib.metadata import version

    done = run(["alexnet", "--version"], REPO)
    assert done.stdout.strip() == f"alexnet {version('alexnet-dag')}"
