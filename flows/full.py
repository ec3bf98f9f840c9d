"""The `alexnet` flow: the six steps in order, then DVC and the run's artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.params import PARAMS_FILE, load_config
from tasks.running import console, lock, report, versioning

# A worker's or `alexnet serve`'s flow-run process imports this module first: no TensorFlow start-up lines.
with console.tensorflow_start_up():
    from tasks.augment import augment_task
    from tasks.download import download_task
    from tasks.evaluate import evaluate_task
    from tasks.fetch_urls import fetch_urls_task
    from tasks.split import split_task
    from tasks.train import train_task


@flow(name="alexnet", log_prints=True)
def alexnet(params_file: str = PARAMS_FILE, overrides: list[str] | None = None) -> dict:
    """Fetch, download, split, augment, train and evaluate AlexNet.

    Args:
        params_file: The params file to read, relative to the working directory.
        overrides: `key=value` overrides of params, as in `dvc exp run -S`, e.g. `train.epochs=5`.
    """
    cfg = load_config(params_file, overrides)
    # One writer per project folder: a run that overlaps another waits here, then finds its outputs cached.
    with lock.held(Path.cwd(), f"flow run {flow_run.name!r} ({flow_run.id})", cfg.run.lock_timeout_s,
                   say=get_run_logger().info):
        urls = fetch_urls_task.submit(cfg)
        images = download_task.submit(cfg, wait_for=[urls])
        split = split_task.submit(cfg, wait_for=[images])
        augmented = augment_task.submit(cfg, wait_for=[split])
        model = train_task.submit(cfg, wait_for=[augmented])
        evaluation = evaluate_task.submit(cfg, wait_for=[model])
        futures = {"fetch_urls": urls, "download": images, "split": split, "augment": augmented,
                   "train": model, "evaluate": evaluation}
        summaries = {name: report.outcome(future) for name, future in futures.items()}
        keys = {name: summary["cache_key"] for name, summary in summaries.items()}
        summaries["dvc"] = versioning.commit(cfg, Path.cwd(), keys)
        report.publish(summaries, cfg, Path.cwd())
    return summaries
