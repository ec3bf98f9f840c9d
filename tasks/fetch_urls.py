"""fetch_urls: one URL list per class from an ImageNet-style endpoint.

The endpoint answers a synset's image URLs as text (historically CRLF-separated
lines, sometimes wrapped in HTML); BeautifulSoup reads either, and only http(s)
URLs are kept.
"""

from __future__ import annotations

from pathlib import Path

import requests
from bs4 import BeautifulSoup

from tasks import files, paths
from tasks.config import Config
from tasks.step import Step, StepError, Summary, step_task

STEP = Step(name="fetch_urls", params=("data",), deps=(), outs=(paths.URLS,), network=True)


LIST_TIMEOUT_S = 30.0


class SourceError(StepError):
    """The URL-list source could not be read; the message says which class and why."""


def parse_url_list(body: bytes) -> list[str]:
    """http(s) URLs from a URL-list body (plain text or HTML), in order, without repeats."""
    text = BeautifulSoup(body, "html.parser").get_text("\n")
    urls = [line.strip() for line in text.splitlines()]
    return list(dict.fromkeys(u for u in urls if u.lower().startswith(("http://", "https://"))))


def fetch_list(endpoint: str, wnid: str, timeout_s: float = LIST_TIMEOUT_S) -> list[str]:
    url = endpoint.format(wnid=wnid)
    try:
        response = requests.get(url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise SourceError(f"could not fetch the URL list for {wnid} from {url}: {exc}") from None
    return parse_url_list(response.content)


def run(cfg: Config, workdir: Path) -> Summary:
    """Write data/urls/<class>.txt for every configured class."""
    out = workdir / paths.URLS
    lists = {
        name: fetch_list(cfg.data.url_list_endpoint, spec.wnid)
        for name, spec in cfg.data.classes.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    for stale in set(out.glob("*.txt")) - {out / f"{name}.txt" for name in lists}:
        stale.unlink()  # a class removed from params must not linger in the output
    for name, urls in lists.items():
        files.write_text(out / f"{name}.txt", "".join(f"{u}\n" for u in urls))
    counts = {name: len(urls) for name, urls in lists.items()}
    print(f"fetch_urls: {counts}")
    return {"step": STEP.name, "urls": counts}


fetch_urls_task = step_task(STEP, run)
