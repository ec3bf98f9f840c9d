"""Breakages the tests must catch: each applied to a scratch copy of the project, with the tests that guard it.

    python tests/mutants.py              # every mutant: caught or missed, then a summary
    python tests/mutants.py NAME ...     # some of them
    python tests/mutants.py --list       # names, files and tests
    python tests/mutants.py --pure       # cosmic-ray over the pure modules (tests/cosmic-ray.toml)

Each mutant is a small edit where a silent error would cost users most: a model
that learns the wrong labels, a resumed training that is not the one asked for, a
cache that keeps a stale result, an image kept that should not be. Its tests run
against the edited copy (stopping at their first failure): the mutant is `caught`
when they fail, `missed` when they pass. First, the same tests run on the unedited
copy (`--no-baseline` skips that), so a catch is the edit's doing. A mutant whose
text is no longer in its file is `stale`: the code moved, and the mutant should
follow it. Slow (the training tests train): `make mutants`, not part of `make test`.

`--pure` hands the modules that are pure functions of their input to cosmic-ray,
which makes every mutation its operators can (a comparison turned, a constant
changed, a `not` added, ...) and runs their fast tests on each: it prints the
mutants that survived and the score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COSMIC_RAY = "tests/cosmic-ray.toml"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: node ids or files


TRAIN, STEPS = "tests/test_train.py", "tests/test_steps.py"
RESUMED = f"{TRAIN}::test_training_killed_with_sigkill_resumes_exactly"

MUTANTS = (
    Mutant("labels-in-reverse-class-order", "tasks/augment.py",
           "labels = {cls: i for i, cls in enumerate(plan.classes)}",
           "labels = {cls: len(plan.classes) - 1 - i for i, cls in enumerate(plan.classes)}",
           (f"{STEPS}::test_augment_writes_canonical_images_as_shards_stats_and_preview",
            f"{TRAIN}::test_alexnet_predict_names_validation_images_by_their_own_class")),
    Mutant("resume-from-fresh-weights", "tasks/train.py",
           "variable.assign(saved[str(i)][()])", "pass", (RESUMED,)),
    Mutant("resume-without-optimizer-state", "tasks/train.py",
           "return [*trainer.variables, *trainer.optimizer.variables]", "return [*trainer.variables]", (RESUMED,)),
    Mutant("resume-without-dropout-state", "tasks/train.py",  # what Keras's weights files hold
           "return [*trainer.variables, *trainer.optimizer.variables]",
           "return [*trainer.weights, *trainer.optimizer.variables]", (RESUMED,)),
    Mutant("resume-forgets-the-plateau-rule", "tasks/train.py",
           "setattr(rule, name, value)", "pass",
           (f"{TRAIN}::test_a_resumed_training_is_exact_whatever_its_settings",)),
    Mutant("split-ignores-the-seed", "tasks/split.py",
           'f"{seed}:{sha256}"', 'f"0:{sha256}"',
           (f"{STEPS}::test_split_is_deterministic_stratified_and_disjoint",
            f"{STEPS}::test_another_seed_draws_another_split")),
    Mutant("saved-model-without-the-trained-weights", "tasks/train.py",
           "export.set_weights(net.get_weights())", "net.get_weights()",
           (f"{TRAIN}::test_mixed_precision_training_saves_a_float32_model_of_the_trained_weights",)),
    Mutant("augment-params-missing-from-trains-cache-key", "tasks/train.py",
           'params=("base", "augment", "model", "train"),', 'params=("base", "model", "train"),',
           ("tests/running/test_cache_key.py",)),
    Mutant("label-conflict-kept", "tasks/acquire/ledger.py",
           "HAVING COUNT(DISTINCT cls) > 1", "HAVING COUNT(DISTINCT cls) > 2",
           ("tests/acquire/test_ledger.py",
            "tests/acquire/test_download.py::test_duplicates_are_stored_once_and_label_conflicts_kept_in_neither")),
    Mutant("top-k-off-by-one", "tasks/evaluate.py",
           "best = np.argsort(-probabilities, axis=1)[:, :k]", "best = np.argsort(-probabilities, axis=1)[:, :k + 1]",
           (f"{TRAIN}::test_scores_give_top_k_errors", f"{STEPS}::test_scores_per_class")),
    Mutant("index-offset-off-by-one-header", "tasks/storage/shards.py",
           "offset = self.at + len(head)", "offset = self.at",
           ("tests/acquire/test_download.py::test_every_hostile_case_gets_its_reason_and_every_good_one_is_kept",)),
    Mutant("lock-not-taken", "tasks/running/lock.py",
           "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "fcntl.LOCK_EX",
           ("tests/running/test_lock.py",)),
    Mutant("devkit-ids-mapped-in-sorted-order", "tasks/acquire/sources.py",
           'zip(synsets["ILSVRC2012_ID"], synsets["WNID"])',
           'zip(sorted(synsets["ILSVRC2012_ID"]), sorted(synsets["WNID"]))',
           ("tests/test_ilsvrc.py",)),
    Mutant("placeholder-image-kept", "tasks/acquire/images.py",
           "if digest in PLACEHOLDERS or digest in placeholders:", "if digest in placeholders:",
           ("tests/acquire/test_mirror.py",
            "tests/acquire/test_download.py::test_every_hostile_case_gets_its_reason_and_every_good_one_is_kept")),
    Mutant("bad-url-reason-swapped", "tasks/acquire/images.py",
           'return Checked(None, "truncated", digest)', 'return Checked(None, "corrupt", digest)',
           (f"{STEPS}::test_download_gives_every_bad_url_a_reason",)),
)


def scratch_copy(target: Path) -> Path:
    """The project's files as they are in the work tree (committed or not, never ignored ones), in a git
    repository of their own (the tests copy the tracked files of theirs)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    return target


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    """(exit code, last lines) of the tests run on `copy`; 124 when they ran past `timeout`."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(args, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"still running after {timeout:g} s"
    return done.returncode, "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])


def verdict(code: int) -> str:
    # pytest: 1 = tests failed; 0 = passed; anything else = it could not run them (reported as such).
    return {0: "missed", 1: "caught"}.get(code, f"error (pytest exit {code})")


def cosmic_ray(copy: Path) -> int:
    """cosmic-ray's session over the copy (it edits the files it mutates): each survivor's diff, and the score."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in (["cosmic-ray", "init", COSMIC_RAY, "session.sqlite"],
                    ["cr-filter-operators", "session.sqlite", COSMIC_RAY],
                    ["cosmic-ray", "exec", COSMIC_RAY, "session.sqlite"]):
        subprocess.run(command, cwd=copy, env=env, check=True)
    dump = subprocess.run(["cosmic-ray", "dump", "session.sqlite"], cwd=copy, env=env, capture_output=True,
                          text=True, check=True).stdout
    outcomes = Counter()
    for job, result in map(json.loads, dump.splitlines()):
        if result["worker_outcome"] == "skipped":  # left out by the config's filter
            continue
        outcomes[result["test_outcome"]] += 1
        if result["test_outcome"] == "survived":
            print(f"survived: {job['mutations'][0]['operator_name']}\n{result['diff']}")
    tried = outcomes["killed"] + outcomes["survived"]
    print(f"cosmic-ray: {outcomes['killed']} of {tried} mutants killed ({outcomes['killed'] / max(tried, 1):.1%}), "
          f"{outcomes['incompetent']} incompetent (the module no longer imports)")
    return 0 if not outcomes["survived"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument("--pure", action="store_true", help=f"run cosmic-ray as {COSMIC_RAY} says")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unedited copy")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for one mutant's tests (default 1800)")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    if unknown := [n for n in args.names if n not in known]:
        parser.error(f"unknown mutants: {', '.join(unknown)}; see --list")
    chosen = [known[n] for n in args.names] or list(MUTANTS)
    if args.list:
        for m in chosen:
            print(f"{m.name}\n  {m.file}: {m.old!r} -> {m.new!r}\n  tests: {' '.join(m.tests)}")
        return 0

    with tempfile.TemporaryDirectory(prefix="alexnet-mutants-") as folder:
        copy = scratch_copy(Path(folder))
        if args.pure:
            return cosmic_ray(copy)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            start = time.monotonic()
            code, tail = run_tests(copy, tests, args.timeout * len(chosen))
            if code != 0:
                print(f"the tests fail on the unedited project (pytest exit {code}): fix that first\n{tail}")
                return 1
            print(f"baseline: the {len(tests)} tests pass on the unedited project ({time.monotonic() - start:.0f} s)")
        results = []
        for m in chosen:
            path = copy / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                results.append((m, "stale", f"{m.old!r} occurs {original.count(m.old)} times in {m.file}"))
            else:
                path.write_text(original.replace(m.old, m.new))
                start = time.monotonic()
                try:
                    code, tail = run_tests(copy, m.tests, args.timeout)
                finally:
                    path.write_text(original)
                results.append((m, verdict(code), f"{time.monotonic() - start:.0f} s"))
            m, said, note = results[-1]
            print(f"{said:<8} {m.name:<46} {m.file} ({note})", flush=True)
            if said not in ("caught", "missed", "stale"):
                print(tail)
    caught = sum(said == "caught" for _, said, _ in results)
    print(f"{caught} of {len(results)} mutants caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
