"""What a run tells its user: a terminal summary and Prefect UI artifacts."""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks import paths
from tasks.config import Config

OUTPUTS = {
    "model": paths.MODEL,
    "model card": paths.MODEL_CARD,
    "evaluated model card": paths.EVAL_CARD,
    "metrics": paths.EVAL,
    "per-class metrics": paths.CLASS_SCORES,
    "training history": paths.HISTORY,
    "plots": "plots/",
    "TensorBoard logs": f"{paths.LOGS}/",
}


SHOWN = 12  # rows of a per-class table shown in a console summary or a UI table


def some(names: list[str], limit: int = SHOWN) -> str:
    """Names for a log line: all of them, or the first few and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def class_table(table: dict[str, dict[str, int]], limit: int = SHOWN, sort_by: str | None = None) -> str:
    """Counts per class as text: every class when there are few, else the smallest `limit`
    (by `sort_by`, default the first column) and each column's total, min, median and max."""
    import pandas as pd

    frame = pd.DataFrame.from_dict(table, orient="index").fillna(0).astype(int).rename_axis("class")
    if len(frame) <= limit:
        return frame.to_string()
    column = sort_by or frame.columns[0]
    smallest = frame.sort_values(column, kind="stable").head(limit)
    spread = frame.agg(["sum", "min", "median", "max"]).rename(index={"sum": "total"})
    return (f"{spread.to_string()}\n{len(frame)} classes; the {limit} with the fewest {column}:\n"
            f"{smallest.to_string()}")


def outcome(future) -> dict:
    """A step task's summary, marked when it is a cache hit (a run earlier, through either door)."""
    return {**future.result(), "cached": future.state.name == "Cached"}


def how_it_ran(summary: dict) -> str:
    """"ran in 3.1 s", or, for a cache hit, which run made its outputs and when."""
    if not summary.get("cached"):
        return f"ran in {summary['seconds']} s"
    return f"cached: made by {summary.get('ran_by')} at {summary.get('ran_at')} in {summary['seconds']} s"


def text(summaries: dict) -> str:
    """A short summary: images per class, validation accuracy, where the outputs are."""
    download = summaries.get("download", {})
    ok, failed = download.get("ok", {}), download.get("failed", {})
    lines = ["", "alexnet: pipeline finished"]
    if ok:
        table = {cls: {"ok": ok.get(cls, 0), "failed": failed.get(cls, 0)} for cls in sorted(ok)}
        lines += ["  images per class (ok / failed):", *("    " + line for line in class_table(table).splitlines())]
    if "evaluate" in summaries:
        ev = summaries["evaluate"]
        view = {"ten_crop": ", 10 crops", "centre_crop": ", centre crop"}.get(ev.get("view"), "")
        lines.append(f"  validation accuracy: {ev['accuracy']:.1%} on {ev['images']} images{view}")
        if isinstance(ev.get("top5_error"), float):
            lines.append(f"  top-1 / top-5 error: {ev['top1_error']:.1%} / {ev['top5_error']:.1%}")
    lines += [f"  {name + ':':<22} {path}" for name, path in OUTPUTS.items()]
    steps = {name: s for name, s in summaries.items() if "cache_key" in s}
    if steps:
        lines.append("  steps:")
        lines += [f"    {name:<11} {how_it_ran(s)}" for name, s in steps.items()]
    dvc = summaries.get("dvc", {})
    if dvc.get("committed"):
        lines.append(f"  DVC: committed {', '.join(dvc['committed'])}")
    if dvc.get("pushed"):
        lines.append(f"  DVC: pushed {', '.join(dvc['pushed'])} to the remote")
    if dvc.get("note"):
        lines.append(f"  DVC: {dvc['note']}")
    return "\n".join(lines)


def flatten(values: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested summary as {"a.b": value}."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def outcome_rows(download: dict, limit: int = SHOWN) -> list[dict]:
    """URLs per class and outcome for a UI table: every class when there are few; else the totals,
    then the `limit` classes with the fewest good images (all of them are in the manifest)."""
    outcomes = download.get("outcomes", {})
    columns = sorted({k for counts in outcomes.values() for k in counts})
    rows = [{"class": cls, **{k: counts.get(k, 0) for k in columns}} for cls, counts in sorted(outcomes.items())]
    if len(rows) <= limit:
        return rows
    total = {"class": f"all {len(rows)} classes", **{k: sum(r[k] for r in rows) for k in columns}}
    fewest = sorted(rows, key=lambda r: r.get("ok", 0))[:limit]
    return [total, *({**r, "class": f"{r['class']} (fewest ok #{i})"} for i, r in enumerate(fewest, 1))]


def markdown(summaries: dict, workdir: Path) -> str:
    """The run's summary with links to its outputs on the machine that ran it."""
    links = "\n".join(
        f"- [{name}]({(workdir / path).resolve().as_uri()}) `{path}`"
        for name, path in OUTPUTS.items() if (workdir / path).exists()
    )
    steps = "\n".join(f"| {name} | {how_it_ran(s)} |" for name, s in summaries.items() if "cache_key" in s)
    return (f"# AlexNet run\n\n```\n{text(summaries).strip()}\n```\n\n## Outputs\n\n{links}\n\n"
            f"## Steps\n\n| step | how it ran |\n|---|---|\n{steps}\n")


def effective_params(cfg: Config, limit: int = SHOWN) -> dict:
    """The params a run used, for reading: a long list of classes is shortened to its first entries."""
    params = cfg.model_dump(mode="json", exclude_none=True)
    classes = params["data"]["classes"]
    if len(classes) > limit:
        shown = dict(list(classes.items())[:limit])
        more = f"... and {len(classes) - limit} more"
        params["data"]["classes"] = {**shown, more: f"(all of them in {paths.CLASS_NAMES})"}
    return params


def publish(summaries: dict, cfg: Config, workdir: Path) -> None:
    """Prefect artifacts for the run page: summary, images per class, metrics, params."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = outcome_rows(summaries.get("download", {}))
    if rows:
        create_table_artifact(key="images-per-class", table=rows, description=(
            "URLs per class and outcome" if len(rows) == len(summaries["download"]["outcomes"]) else
            f"URLs per outcome, and the classes with the fewest good images; every URL is in {paths.MANIFEST}"))
    metrics = flatten({k: v for k, v in summaries.get("evaluate", {}).items() if k != "seconds"})
    if metrics:
        create_table_artifact(key="metrics", table=[{"metric": k, "value": v} for k, v in metrics.items()],
                              description="Evaluation on the validation set")
    create_markdown_artifact(key="effective-params", markdown="```yaml\n" + yaml.safe_dump(
        effective_params(cfg), sort_keys=False) + "```", description="The params this run used")
    create_markdown_artifact(key="alexnet-run-summary", markdown=markdown(summaries, workdir),
                             description="Images, validation accuracy and where the outputs are")
