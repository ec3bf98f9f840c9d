"""What a run tells its user: a terminal summary and Prefect UI artifacts."""

from __future__ import annotations

from tasks import paths

OUTPUTS = {
    "model": paths.MODEL,
    "model card": paths.MODEL_CARD,
    "metrics": paths.EVAL,
    "training history": paths.HISTORY,
    "plots": "plots/",
    "TensorBoard logs": f"{paths.LOGS}/",
}


def text(summaries: dict) -> str:
    """A short summary: images per class, validation accuracy, where the outputs are."""
    download = summaries.get("download", {})
    lines = ["", "alexnet: pipeline finished", "  images per class (ok / failed):"]
    for cls in sorted(download.get("ok", {})):
        lines.append(f"    {cls:<12} {download['ok'].get(cls, 0):>5} / {download.get('failed', {}).get(cls, 0)}")
    if "evaluate" in summaries:
        ev = summaries["evaluate"]
        lines.append(f"  validation accuracy: {ev['accuracy']:.1%} on {ev['images']} images")
    lines += [f"  {name + ':':<18} {path}" for name, path in OUTPUTS.items()]
    dvc = summaries.get("dvc", {})
    if dvc.get("committed"):
        lines.append(f"  DVC: committed {', '.join(dvc['committed'])}")
    if dvc.get("pushed"):
        lines.append(f"  DVC: pushed {', '.join(dvc['pushed'])} to the remote")
    if dvc.get("note"):
        lines.append(f"  DVC: {dvc['note']}")
    return "\n".join(lines)


def publish(summaries: dict) -> None:
    """Prefect artifacts for the run page: the summary and the per-class counts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    download = summaries.get("download", {})
    outcomes = download.get("outcomes", {})
    columns = sorted({k for counts in outcomes.values() for k in counts})
    rows = [{"class": cls, **{k: counts.get(k, 0) for k in columns}} for cls, counts in sorted(outcomes.items())]
    if rows:
        create_table_artifact(key="images-per-class", table=rows, description="URLs per class and outcome")
    create_markdown_artifact(
        key="alexnet-run-summary",
        markdown="```\n" + text(summaries).strip() + "\n```",
        description="Images, validation accuracy and where the outputs are",
    )
