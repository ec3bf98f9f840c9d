"""download: fetch every listed URL, keep the ones that decode as images.

Reader (URL lists) -> fetcher (bounded, streamed, retried) -> validator (OpenCV
decode) -> writer (content-digest names) -> manifest (one row per class and URL,
with a reason for every URL that did not give an image). Individual failures never
fail the step; a class left with too few good images does.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pandas as pd
import requests

from tasks import files, paths
from tasks.progress import Progress
from tasks.config import Config, Download
from tasks.step import Step, StepError, Summary, step_task

STEP = Step(
    name="download",
    params=("data", "download"),
    deps=(paths.URLS,),
    outs=(paths.IMAGES, paths.MANIFEST),
    network=True,
)

COLUMNS = ["url", "class", "status", "reason", "path", "sha256", "width", "height", "bytes", "attempts", "elapsed_s"]
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
CONNECT_TIMEOUT_S = 5.0
BACKOFF_S = 0.5


@dataclass
class Row:
    url: str
    cls: str
    status: str = "failed"
    reason: str = ""
    path: str = ""
    sha256: str = ""
    width: int = 0
    height: int = 0
    bytes: int = 0
    attempts: int = 0
    elapsed_s: float = 0.0

    def record(self) -> dict:
        row = asdict(self)
        row["class"] = row.pop("cls")
        return row


class Fetcher:
    """HTTP GET with a connect timeout, a total deadline, a byte cap and retries."""

    def __init__(self, cfg: Download):
        self.cfg = cfg
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.headers["User-Agent"] = "alexnet-dag"
        return self.local.session

    def _once(self, url: str) -> tuple[bytes | None, str, bool]:
        """(body, reason, transient) for one attempt."""
        deadline = time.monotonic() + self.cfg.timeout_s
        timeout = (min(CONNECT_TIMEOUT_S, self.cfg.timeout_s), self.cfg.timeout_s)
        try:
            with self.session().get(url, stream=True, timeout=timeout) as response:
                if response.status_code >= 400:
                    return None, f"http_{response.status_code}", response.status_code in TRANSIENT_STATUS
                body = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > self.cfg.max_bytes:
                        return None, "too_large", False
                    if time.monotonic() > deadline:
                        return None, "timeout", True
                return bytes(body), "", False
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            return None, "invalid_url", False
        except requests.Timeout:
            return None, "timeout", True
        except requests.RequestException:
            return None, "connection_error", True

    def get(self, url: str) -> tuple[bytes | None, str, int]:
        for attempt in range(1, self.cfg.retries + 2):
            body, reason, transient = self._once(url)
            if body is not None or not transient or attempt > self.cfg.retries:
                return body, reason, attempt
            time.sleep(BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")


def _looks_truncated(data: bytes) -> bool:
    """Decoders fill a cut-off JPEG with grey and report success; check the end markers."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-64:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-16:]
    return False


IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


def validate(data: bytes, cfg: Download) -> tuple[np.ndarray | None, str]:
    """Decode with OpenCV; (image, "") or (None, reason)."""
    if not data:
        return None, "empty"
    if _looks_truncated(data):
        return None, "truncated"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None, "corrupt" if data.startswith(IMAGE_MAGIC) else "not_image"
    if min(image.shape[:2]) < cfg.min_side:
        return None, "too_small"
    return image, ""


def encode_for_store(data: bytes, image: np.ndarray, cfg: Download) -> tuple[bytes, str]:
    """The bytes to store and their extension: as downloaded when possible, else re-encoded."""
    h, w = image.shape[:2]
    if cfg.max_side and max(h, w) > cfg.max_side:
        scale = cfg.max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    elif data[:2] == b"\xff\xd8":
        return data, "jpg"
    elif data[:4] == b"\x89PNG":
        return data, "png"
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return encoded.tobytes(), "jpg"


def url_problem(url: str) -> str:
    """A reason code for URLs never worth fetching, else ""."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "invalid_url"
    if not parts.scheme:
        return "invalid_url"
    if parts.scheme.lower() not in ("http", "https"):
        return "bad_scheme"
    return "" if host else "invalid_url"


def process(url: str, cls: str, fetcher: Fetcher, cfg: Download, workdir: Path) -> Row:
    """Fetch, validate and store one URL; every outcome is a row."""
    row, start = Row(url=url, cls=cls), time.monotonic()
    reason = url_problem(url)
    data = None
    if not reason:
        data, reason, row.attempts = fetcher.get(url)
    if data is not None:
        row.bytes = len(data)
        image, reason = validate(data, cfg)
        if image is not None:
            row.sha256 = files.sha256_bytes(data)
            row.height, row.width = image.shape[:2]
            stored, ext = encode_for_store(data, image, cfg)
            row.path = f"{paths.IMAGES}/{cls}/{row.sha256}.{ext}"
            if not (workdir / row.path).is_file():
                files.write_bytes(workdir / row.path, stored)
            row.status = "ok"
    row.reason = reason
    row.elapsed_s = round(time.monotonic() - start, 3)
    return row


def read_url_lists(cfg: Config, workdir: Path) -> dict[str, list[str]]:
    lists = {}
    for cls in cfg.data.classes:
        path = workdir / paths.URLS / f"{cls}.txt"
        if not path.is_file():
            raise StepError(f"missing URL list {path}: run the fetch_urls step first")
        lists[cls] = list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))
    return lists


def previous_ok(workdir: Path) -> dict[tuple[str, str], Row]:
    """Rows of an earlier run whose image is still on disk: reused, not fetched again."""
    manifest = workdir / paths.MANIFEST
    if not manifest.is_file():
        return {}
    frame = pd.read_csv(manifest, keep_default_na=False)
    rows = {}
    for rec in frame[frame["status"] == "ok"].to_dict("records"):
        if (workdir / rec["path"]).is_file():
            rec["cls"] = rec.pop("class")
            rows[(rec["cls"], rec["url"])] = Row(**{k: rec[k] for k in Row.__dataclass_fields__})
    return rows


def download_class(cls, urls, cap, pool, fetcher, cfg, workdir, reuse, progress) -> list[Row]:
    """Rows for one class, in list order; the first `cap` good images are kept."""
    rows: list[Row] = []
    seen: set[str] = set()
    kept, pos = 0, 0
    while pos < len(urls) and (cap is None or kept < cap):
        need = len(urls) if cap is None else cap - kept
        window = urls[pos : pos + max(cfg.workers, int(need * 1.25) + 2)]
        pos += len(window)

        def one(url: str) -> Row:
            row = reuse.get((cls, url)) or process(url, cls, fetcher, cfg, workdir)
            progress.update()
            return row

        for row in pool.map(one, window):
            if row.status == "ok":
                if row.sha256 in seen:
                    row.status, row.reason, row.path = "skipped", "duplicate", ""
                elif cap is not None and kept >= cap:
                    row.status, row.reason, row.path = "skipped", "enough_images", ""
                else:
                    seen.add(row.sha256)
                    kept += 1
            rows.append(row)
    rows += [Row(url=u, cls=cls, status="skipped", reason="enough_images") for u in urls[pos:]]
    return rows


def remove_unlisted(workdir: Path, keep: set[str]) -> None:
    """Images not in this run's manifest (an old class, a lowered cap) are removed."""
    root = workdir / paths.IMAGES
    for path in root.rglob("*"):
        if path.is_file() and path.relative_to(workdir).as_posix() not in keep:
            path.unlink()
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def counts_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows per class and outcome (`ok`, or the reason a URL gave no image)."""
    outcome = manifest["status"].where(manifest["status"] == "ok", manifest["reason"])
    return pd.crosstab(manifest["class"], outcome)


def run(cfg: Config, workdir: Path) -> Summary:
    """Download, validate and store the images of every class; write the manifest."""
    lists = read_url_lists(cfg, workdir)
    files.remove_stale_temps(workdir / paths.IMAGES)
    reuse = previous_ok(workdir)
    fetcher = Fetcher(cfg.download)
    total = sum(len(u) for u in lists.values())
    rows: list[Row] = []
    with ThreadPoolExecutor(cfg.download.workers) as pool, Progress("download", total, unit="url") as bar:
        for cls, urls in lists.items():
            rows += download_class(cls, urls, cfg.data.images_per_class, pool, fetcher, cfg.download, workdir, reuse, bar)
    manifest = pd.DataFrame([r.record() for r in rows], columns=COLUMNS)
    remove_unlisted(workdir, set(manifest.loc[manifest["status"] == "ok", "path"]))
    files.write_csv(workdir / paths.MANIFEST, manifest)

    table = counts_table(manifest)
    print(f"download: images per class and outcome\n{table.to_string()}")
    ok = Counter(manifest.loc[manifest["status"] == "ok", "class"])
    short = {cls: ok.get(cls, 0) for cls in lists if ok.get(cls, 0) < cfg.download.min_images_per_class}
    if short:
        raise StepError(
            f"too few good images: {short} (download.min_images_per_class="
            f"{cfg.download.min_images_per_class}); reasons per URL are in {paths.MANIFEST}"
        )
    return {
        "step": STEP.name,
        "ok": dict(ok),
        "failed": dict(Counter(manifest.loc[manifest["status"] == "failed", "class"])),
        "outcomes": {cls: {k: int(v) for k, v in r.items() if v} for cls, r in table.iterrows()},
    }


download_task = step_task(STEP, run)
