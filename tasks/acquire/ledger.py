"""The download's ledger: every listed URL and what became of it, in an SQLite file.

URL lists can run to millions of lines (ImageNet's fall11 list has 14 million),
so the step holds none of them in memory: the lists and the fetched rows go into
a scratch database beside the chunk records, and planning and the merge are
queries over it. Memory stays flat in the number of URLs; only SQLite's page
cache and one chunk at a time are held.

A fresh ledger is built at every run from the URL lists and the chunk records
(which stay the source of truth), so a run killed at any moment leaves nothing to
repair.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.acquire.downloader import FIELDS, Row  # FIELDS: the columns of `fetched` and the manifest, in Row's order

SELECTED = ", ".join(FIELDS)
# The image index's columns, as the manifest names them (`cls` is written `class`).
INDEX_COLUMNS = ("sha256", "cls", "source_subset", "shard", "member", "offset", "size", "width", "height", "url")
NO_CAP = 1 << 62

SCHEMA = """
CREATE TABLE lines (line INTEGER PRIMARY KEY, url TEXT, subset TEXT);
CREATE TABLE classes (ord INTEGER PRIMARY KEY, cls TEXT UNIQUE, size INTEGER, window INTEGER);
CREATE TABLE listed (cls TEXT, pos INTEGER, url TEXT, subset TEXT, PRIMARY KEY (cls, pos), UNIQUE (cls, url));
CREATE TABLE fetched (url TEXT, cls TEXT, source_subset TEXT, status TEXT, reason TEXT, shard TEXT, member TEXT,
                      offset INTEGER, size INTEGER, sha256 TEXT, width INTEGER, height INTEGER, bytes INTEGER,
                      attempts INTEGER, elapsed_s REAL, PRIMARY KEY (cls, url));
CREATE TABLE loaded (name TEXT PRIMARY KEY);
CREATE TABLE rounds (round INTEGER, ord INTEGER, start INTEGER, stop INTEGER);
"""

# The URLs each round of planning added to the windows, cut into chunks: a chunk is
# a run of `size` of them in list order (classes in order), so its URLs, and so its
# shard, depend only on the plan, never on what a killed run had finished.
CHUNKED = """
SELECT cls, url, part FROM (
    SELECT r.round, r.ord, l.pos, l.cls, l.url,
           (ROW_NUMBER() OVER (PARTITION BY r.round ORDER BY r.ord, l.pos) - 1) / :size AS part
    FROM rounds r JOIN classes c ON c.ord = r.ord
         JOIN listed l ON l.cls = c.cls AND l.pos >= r.start AND l.pos < r.stop
) AS w
WHERE NOT EXISTS (SELECT 1 FROM fetched f WHERE f.cls = w.cls AND f.url = w.url)
ORDER BY round, ord, pos
"""

# The manifest's rows, in list order. Per class: an image under two classes is a
# label conflict (kept in neither), a repeat of a kept image is a duplicate, an
# image past the cap is skipped, and URLs beyond the class's window were never
# needed. `copy` numbers the repeats of an image within a class; `rank` counts the
# distinct clean images so far; a repeat is a duplicate only if its first copy was kept.
RESOLVED = """
WITH rows AS (
    SELECT c.ord, l.pos, l.url, l.cls, l.subset, l.pos < c.window AS needed,
           f.status, f.reason, f.shard, f.member, f.offset, f.size, f.sha256, f.width, f.height, f.bytes,
           f.attempts, f.elapsed_s,
           l.pos < c.window AND f.status = 'ok' AS good
    FROM classes c CROSS JOIN listed l  -- all of each list for the manifest, the windows for kept()
         ON l.cls = c.cls AND l.pos < IIF(:everything, c.size, c.window)
    LEFT JOIN fetched f ON f.cls = l.cls AND f.url = l.url
), conflicts AS (
    SELECT sha256 FROM rows WHERE good GROUP BY sha256 HAVING COUNT(DISTINCT cls) > 1
), copies AS (
    SELECT *, good AND sha256 NOT IN conflicts AS clean,
           ROW_NUMBER() OVER (PARTITION BY cls, good, sha256 ORDER BY pos) AS copy
    FROM rows
), ranked AS (
    SELECT *, SUM(clean AND copy = 1) OVER (PARTITION BY cls ORDER BY pos) AS rank FROM copies
), firsts AS (
    SELECT *, FIRST_VALUE(rank) OVER (PARTITION BY cls, clean, sha256 ORDER BY pos) <= :cap AS first_kept
    FROM ranked
), outcomes AS (
    SELECT *, CASE
        WHEN NOT needed THEN 'enough_images'
        WHEN NOT good THEN reason
        WHEN NOT clean THEN 'label_conflict'
        WHEN NOT first_kept THEN 'enough_images'
        WHEN copy > 1 THEN 'duplicate'
        ELSE '' END AS outcome
    FROM firsts
)
SELECT url, cls, subset AS source_subset,
       CASE WHEN NOT needed OR (good AND clean AND outcome != '') THEN 'skipped'
            WHEN good AND NOT clean THEN 'failed'
            ELSE status END AS status,
       outcome AS reason,
       IIF(good AND outcome = '', shard, '') AS shard, IIF(good AND outcome = '', member, '') AS member,
       IIF(good AND outcome = '', offset, 0) AS offset, IIF(good AND outcome = '', size, 0) AS size,
       IIF(needed, sha256, '') AS sha256, IIF(needed, width, 0) AS width, IIF(needed, height, 0) AS height,
       IIF(needed, bytes, 0) AS bytes, IIF(needed, attempts, 0) AS attempts,
       IIF(needed, elapsed_s, 0.0) AS elapsed_s
FROM outcomes ORDER BY ord, pos
"""


class Ledger:
    """The listed URLs (in list order, each once per class) and their fetched rows."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # scratch: rebuilt from the lists and records every run
        # Only this process opens it, so no file locks (which network file systems, where
        # a project shared with Dask workers may live, often get wrong).
        self.db = sqlite3.connect(path.resolve().as_uri() + "?nolock=1", uri=True, isolation_level=None)
        # A scratch file needs no journal or fsync. A small page cache also bounds the
        # memory of the merge's sorts (SQLite spills them to temp files past it).
        self.db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -500;"
                              + SCHEMA)
        self.path = path

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- filling it ---------------------------------------------------------------

    def add_list(self, cls: str, urls: Iterable[tuple[str, str]]) -> int:
        """A class's list of (URL, the subset its source gives it), streamed in; repeats keep their first place.
        Returns its size."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO lines (url, subset) VALUES (?, ?)", urls)
            # A bare column beside MIN() takes the value of the row with the minimum (SQLite): the first line's subset.
            self.db.execute("INSERT INTO listed SELECT ?, ROW_NUMBER() OVER (ORDER BY MIN(line)) - 1, url, subset "
                            "FROM lines GROUP BY url", (cls,))
            self.db.execute("DELETE FROM lines")
            size = self.db.execute("SELECT COUNT(*) FROM listed WHERE cls = ?", (cls,)).fetchone()[0]
            self.db.execute("INSERT INTO classes (cls, size, window) VALUES (?, ?, 0)", (cls, size))
        return size

    def add_rows(self, rows: Iterable[Row], name: str) -> bool:
        """Fetched rows from one record file, once per file (False if seen); an `ok` row wins over others."""
        with self.db:
            self.db.execute("BEGIN")
            if self.db.execute("INSERT OR IGNORE INTO loaded VALUES (?)", (name,)).rowcount == 0:
                return False
            self.db.executemany(
                f"INSERT INTO fetched ({SELECTED}) VALUES ({', '.join('?' * len(FIELDS))}) "
                "ON CONFLICT (cls, url) DO UPDATE SET "
                + ", ".join(f"{f} = excluded.{f}" for f in FIELDS[2:]) + " WHERE excluded.status = 'ok'",
                ([getattr(r, f) for f in FIELDS] for r in rows))
        return True

    def forget_fetched(self) -> None:
        self.db.execute("DELETE FROM fetched")
        self.db.execute("DELETE FROM loaded")

    def set_windows(self, windows: dict[str, int], round: int) -> None:
        """The classes' windows after `round` rounds of planning (0: the first windows)."""
        with self.db:
            self.db.execute("BEGIN")
            if round == 0:
                self.db.execute("DELETE FROM rounds")
                self.db.execute("UPDATE classes SET window = 0")
            grown = [(round, n, c, n) for c, n in windows.items()]
            self.db.executemany("INSERT INTO rounds SELECT ?, ord, window, ? FROM classes WHERE cls = ? AND ? > window",
                                grown)
            self.db.executemany("UPDATE classes SET window = ? WHERE cls = ?", [(n, c) for c, n in windows.items()])

    # --- reading it ---------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT cls, size FROM classes ORDER BY ord"))

    def fetched(self, status: str) -> Iterator[Row]:
        yield from (Row(*r) for r in self.db.execute(
            f"SELECT {SELECTED} FROM fetched WHERE status = ? ORDER BY cls, url", (status,)))

    def pending(self) -> Iterator[tuple[str, str]]:
        """(class, URL) within the windows and not fetched yet, in list order."""
        # Classes in order, then each one's index range: rows stream out in order without a sort,
        # so the first pending URL comes without reading the rest.
        return self.db.execute(
            "SELECT c.cls, l.url FROM classes c CROSS JOIN listed l ON l.cls = c.cls AND l.pos < c.window "
            "WHERE NOT EXISTS (SELECT 1 FROM fetched f WHERE f.cls = l.cls AND f.url = l.url) ORDER BY c.ord, l.pos")

    def has_pending(self) -> bool:
        return next(self.pending(), None) is not None

    def pending_chunks(self, size: int) -> Iterator[tuple[str, str, int]]:
        """(class, URL, chunk number) of the pending URLs, in list order; see CHUNKED."""
        return self.db.execute(CHUNKED, {"size": size})

    def kept(self, cap: int | None) -> dict[str, int]:
        """Good images per class that the manifest would keep with the current windows."""
        query = f"SELECT cls, COUNT(*) FROM ({RESOLVED}) WHERE status = 'ok' GROUP BY cls"
        return dict(self.db.execute(query, {"cap": _cap(cap), "everything": False}))

    # --- the manifest -------------------------------------------------------------

    def save_manifest(self, cap: int | None) -> None:
        """Resolve the rows once (see RESOLVED) into a table the step reads back."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DROP TABLE IF EXISTS manifest")
            self.db.execute(f"CREATE TABLE manifest AS {RESOLVED}", {"cap": _cap(cap), "everything": True})
            self.db.execute("CREATE INDEX manifest_shard ON manifest (shard, offset)")

    def manifest(self) -> Iterator[Row]:
        yield from (Row(*r) for r in self.db.execute(f"SELECT {SELECTED} FROM manifest ORDER BY rowid"))

    def index(self) -> Iterator[tuple]:
        """The kept images (INDEX_COLUMNS), shard by shard in offset order."""
        return self.db.execute(f"SELECT {', '.join(INDEX_COLUMNS)} FROM manifest WHERE status = 'ok' "
                               "ORDER BY shard, offset")

    def kept_shards(self) -> set[str]:
        return {shard for (shard,) in self.db.execute("SELECT DISTINCT shard FROM manifest WHERE status = 'ok'")}

    def shards_to_prune(self) -> list[str]:
        """Shards holding images the manifest does not keep (a duplicate, a conflict, one past the cap)."""
        return [shard for (shard,) in self.db.execute(
            "SELECT shard FROM (SELECT shard, COUNT(DISTINCT offset) AS n FROM fetched WHERE status = 'ok' "
            "GROUP BY shard) s "
            "WHERE n > (SELECT COUNT(*) FROM manifest m WHERE m.shard = s.shard AND m.status = 'ok')")]

    def kept_members(self, shard: str) -> list[tuple[str, int, int]]:
        """(member, offset, size) of the images the manifest keeps from `shard`, in offset order."""
        return self.db.execute("SELECT member, offset, size FROM manifest WHERE shard = ? AND status = 'ok' "
                               "ORDER BY offset", (shard,)).fetchall()

    def moved(self, shard: str, offsets: dict[int, int]) -> None:
        """`shard` was rewritten with only the images at `offsets` (old to new): the rows follow.

        Rows of images it dropped are forgotten (fetched again if ever needed). Offsets only
        shrink, so moving them in ascending order never meets one not yet moved.
        """
        with self.db:
            self.db.execute("BEGIN")
            kept = ",".join(str(int(old)) for old in offsets)
            self.db.execute(f"DELETE FROM fetched WHERE shard = ? AND offset NOT IN ({kept})", (shard,))
            for table in ("manifest", "fetched"):
                self.db.executemany(f"UPDATE {table} SET offset = ? WHERE shard = ? AND offset = ?",
                                    [(new, shard, old) for old, new in sorted(offsets.items())])

    def outcomes(self) -> list[tuple[str, str, str, int]]:
        """(class, status, outcome, URLs): the outcome is `ok` or the reason a URL gave no image."""
        return self.db.execute("SELECT cls, status, IIF(status = 'ok', 'ok', reason), COUNT(*) FROM manifest "
                               "GROUP BY 1, 2, 3 ORDER BY MIN(rowid)").fetchall()


def _cap(cap: int | None) -> int:
    return NO_CAP if cap is None else cap
