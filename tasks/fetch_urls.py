"""fetch_urls: one list of image URLs per class, from the configured sources.

The sources (ImageNet's endpoint, URL-list files, web pages, archives, local
folders) and their parsers are in `tasks.acquire.sources`; this step writes what they
list to data/urls/<class>.txt, one entry per line.
"""

from __future__ import annotations

from pathlib import Path

from tasks import paths
from tasks.acquire import mirror, sources
from tasks.config import Config
from tasks.running import report
from tasks.running.task import step_task
from tasks.step import Step, Summary
from tasks.storage import files, in_place

STEP = Step(
    name="fetch_urls",
    params=("data",),
    deps=(),
    outs=(paths.URLS,),
    network=True,
    inputs=lambda cfg, workdir: sources.local_inputs(cfg.data, workdir),
)


def run(cfg: Config, workdir: Path) -> Summary:
    """Write data/urls/<class>.txt for every configured class."""
    out = workdir / paths.URLS
    files.remove_stale_temps(out)
    with mirror.serving_if_needed(cfg.data):  # the demo source, when nothing else answers there
        lists = sources.class_lists(cfg.data, workdir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in set(out.glob("*.txt")) - {out / f"{name}.txt" for name in lists}:
        stale.unlink()  # a class removed from params must not linger in the output
    for name, urls in lists.items():
        files.write_text(out / f"{name}.txt", "".join(f"{u}\n" for u in urls))
    # The archives whose members the lists give by offset: the download checks they are unchanged.
    in_place.record(out, in_place.digests(sources.containers(cfg.data, workdir, folders=False), workdir))
    counts = {name: len(urls) for name, urls in lists.items()}
    print(f"fetch_urls: {sum(counts.values())} entries for {len(counts)} classes\n"
          + report.class_table({name: {"entries": n} for name, n in counts.items()}))
    return {"step": STEP.name, "urls": counts}


fetch_urls_task = step_task(STEP, run)
