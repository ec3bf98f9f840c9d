"""The download step's bookkeeping at scale: memory and time of the ledger, 1,000 to 1,000,000 URLs.

No downloads: made-up URL lists and fetched rows (a quarter of them failed, one
image in ten repeated within its class, a few under two classes) go through what the
download step does with them: lists and chunk records into the ledger (`tasks.acquire.ledger`),
the plan with growing windows (`data.images_per_class` of 60% of each list), the
pending chunks, the merge, the manifest written out, and every kept image looked up.
Each size runs in a fresh process. The baseline is the same process's memory after
its imports, before any URL: the peak must not grow with the number of URLs.

    python bench/ledger.py [--sizes 1000 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ENV

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks import download  # noqa: E402  (after the path: the project's own modules)
from tasks.acquire.downloader import Records, Row, write_rows  # noqa: E402
from tasks.acquire.ledger import Ledger  # noqa: E402
from tasks.config import Download  # noqa: E402

CLASSES = 10


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def url_of(cls: str, i: int) -> str:
    return f"http://127.0.0.1:8000/{cls}/{i}.jpg"


def row(cls: str, url: str, shard: str, at: int) -> Row:
    """A made-up fetched row for one of url_of()'s URLs, stored `at` in `shard`."""
    i = int(url.rsplit("/", 1)[1].removesuffix(".jpg"))
    if i % 4 == 3:
        return Row(url=url, cls=cls, status="failed", reason="http_404", attempts=1, elapsed_s=0.2)
    image = f"shared-{i}" if i % 1000 == 0 else f"{cls}-{i - 1 if i % 10 == 1 else i}"  # conflicts, repeats
    sha = hashlib.sha256(image.encode()).hexdigest()
    return Row(url=url, cls=cls, status="ok", shard=shard, member=f"{cls}/{sha}.jpg", offset=512 + 61_440 * at,
               size=60_000, sha256=sha, width=500, height=375, bytes=60_000, attempts=1, elapsed_s=0.2)


def measure(urls: int) -> dict:
    """What the download step does with the lists and records (tasks.download.run), minus the fetching."""
    before = maxrss_mb()
    per_class = urls // CLASSES
    cap = max(1, int(per_class * 0.6))
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        records = Records(Path(folder), Download())
        with Ledger(records.folder / "ledger.sqlite") as ledger:
            for cls in (f"c{k}" for k in range(CLASSES)):
                ledger.add_list(cls, ((url_of(cls, i), "") for i in range(per_class)))
            records.start(ledger)
            rounds = 0
            while True:
                records.load(ledger)
                download.plan(ledger, cap)
                if not ledger.has_pending():
                    break
                rounds += 1
                download.fingerprint(ledger.pending())
                for chunk in download.chunks_of(ledger.pending_chunks(4096)):  # each "fetched" into its record
                    rows = [row(cls, url, chunk.shard, at) for at, (cls, url) in enumerate(chunk.entries)]
                    records.write(chunk, rows)
            ledger.save_manifest(cap)
            looked_up = sum(len(ledger.kept_members(shard)) for shard in ledger.shards_to_prune())
            download.write_index(Path(folder) / "index.csv", ledger.index())
            write_rows(Path(folder) / "manifest.csv", ledger.manifest())
            outcomes = ledger.outcomes()
    return {"urls": urls, "seconds": time.monotonic() - start, "before_mb": before, "peak_mb": maxrss_mb(),
            "rounds": rounds, "looked_up": looked_up, "rows": sum(n for *_, n in outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    print("the download step's ledger: lists in, plan, chunks, merge, manifest out (no downloads)")
    print(f"{'URLs':>9} {'rounds':>7} {'seconds':>8} {'us/URL':>7} {'baseline MB':>12} {'peak MB':>8} "
          f"{'growth MB':>10} {'manifest rows':>14}")
    for urls in args.sizes:
        done = subprocess.run([sys.executable, __file__, "one", str(urls)], capture_output=True, text=True, env=ENV)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{r['urls']:>9} {r['rounds']:>7} {r['seconds']:>8.1f} {1e6 * r['seconds'] / r['urls']:>7.1f} {r['before_mb']:>12.0f} "
              f"{r['peak_mb']:>8.0f} {r['peak_mb'] - r['before_mb']:>10.1f} {r['rows']:>14}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["one"]:
        print(json.dumps(measure(int(sys.argv[2]))))
    else:
        main()
