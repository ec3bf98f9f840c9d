"""The ledger's queries against the merge rules written plainly in Python, on generated cases."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import download
from tasks.acquire.downloader import Row
from tasks.acquire.ledger import Ledger
from tasks.running import runners

URLS = [f"http://127.0.0.1/{i}.jpg" for i in range(12)]
DIGESTS = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
NOWHERE = {"shard": "", "member": "", "offset": 0, "size": 0}  # where an image the manifest does not keep is


def stored(cls: str, sha: str, shard: int = 0, **fields) -> Row:
    """An `ok` row whose image is in shard `shard` (its offset drawn from its digest, as if stored once there)."""
    return Row(cls=cls, status="ok", shard=f"data/images/{shard}.tar", member=f"{cls}/{sha}.jpg",
               offset=512 + 1024 * DIGESTS.index(sha), size=100, sha256=sha, **fields)


def reference_resolve(lists: dict[str, list[str]], known: dict, windows: dict[str, int], cap: int | None) -> list[Row]:
    """The merge rules, one URL at a time: conflicts across classes, then repeats, then the cap."""
    owner: dict[str, str] = {}  # sha256 -> the class it came under, or "" under several
    for cls, urls in lists.items():
        for url in urls[: windows[cls]]:
            row = known[(cls, url)]
            if row.status == "ok":
                owner[row.sha256] = cls if owner.get(row.sha256, cls) == cls else ""
    out = []
    for cls, urls in lists.items():
        seen: set[str] = set()
        for url in urls[: windows[cls]]:
            row = known[(cls, url)]
            if row.status == "ok":
                if not owner[row.sha256]:
                    row = replace(row, status="failed", reason="label_conflict", **NOWHERE)
                elif row.sha256 in seen:
                    row = replace(row, status="skipped", reason="duplicate", **NOWHERE)
                elif cap is not None and len(seen) >= cap:
                    row = replace(row, status="skipped", reason="enough_images", **NOWHERE)
                else:
                    seen.add(row.sha256)
            out.append(row)
        out += [Row(url=url, cls=cls, status="skipped", reason="enough_images") for url in urls[windows[cls]:]]
    return out


def reference_plan(lists: dict[str, list[str]], known: dict, cap: int | None) -> tuple[dict, list]:
    windows = {cls: download.first_window(len(urls), cap) for cls, urls in lists.items()}
    while True:
        pending = [(c, u) for c, urls in lists.items() for u in urls[: windows[c]] if (c, u) not in known]
        if pending or cap is None:
            return windows, pending
        kept = {c: sum(r.status == "ok" for r in reference_resolve(lists, known, windows, cap) if r.cls == c)
                for c in lists}
        grown = {c: download.grown_window(windows[c], kept[c], cap, len(urls)) for c, urls in lists.items()
                 if kept[c] < cap and windows[c] < len(urls)}
        if not grown:
            return windows, []
        windows.update(grown)


def fetched_row(cls: str, url: str, draw) -> Row:
    if draw(st.integers(0, 3)):  # mostly good images, so repeats, conflicts and caps meet
        sha = draw(st.sampled_from(DIGESTS))
        return stored(cls, sha, draw(st.integers(0, 1)), url=url, width=40, height=30, bytes=1000, attempts=1,
                      elapsed_s=0.01)
    return Row(url=url, cls=cls, status="failed", reason=draw(st.sampled_from(["http_404", "placeholder"])),
               sha256=draw(st.sampled_from(["", DIGESTS[0]])), attempts=2, elapsed_s=0.02)


@st.composite
def cases(draw, all_fetched: bool):
    names = draw(st.lists(st.sampled_from(["cat", "dog", "emu"]), min_size=1, max_size=3, unique=True))
    listed = {cls: draw(st.lists(st.sampled_from(URLS), max_size=10)) for cls in names}  # repeats included
    lists = {cls: list(dict.fromkeys(urls)) for cls, urls in listed.items()}
    known = {(cls, url): fetched_row(cls, url, draw) for cls, urls in lists.items() for url in urls
             if all_fetched or draw(st.booleans())}
    cap = draw(st.none() | st.integers(0, 4))
    return listed, lists, known, cap


def ledger_with(path: Path, listed: dict[str, list[str]], known: dict) -> Ledger:
    ledger = Ledger(path)
    for cls, urls in listed.items():
        ledger.add_list(cls, ((url, "") for url in urls))
    ledger.add_rows(iter(known.values()), "records.csv")
    return ledger


@settings(max_examples=150, deadline=None)
@given(case=cases(all_fetched=True), data=st.data())
def test_the_manifest_follows_the_merge_rules(tmp_path_factory, case, data):
    listed, lists, known, cap = case
    windows = {cls: data.draw(st.just(len(urls)) | st.integers(0, len(urls))) for cls, urls in lists.items()}
    with ledger_with(tmp_path_factory.mktemp("ledger") / "ledger.sqlite", listed, known) as ledger:
        assert ledger.sizes() == {cls: len(urls) for cls, urls in lists.items()}  # repeats listed once, first place
        ledger.set_windows(windows, 0)
        ledger.save_manifest(cap)
        assert list(ledger.manifest()) == reference_resolve(lists, known, windows, cap)
        kept = {(r.shard, r.member, r.offset, r.size) for r in ledger.manifest() if r.status == "ok"}
        assert ledger.kept_shards() == {shard for shard, *_ in kept}
        assert {(s, *m) for s in ledger.kept_shards() for m in ledger.kept_members(s)} == kept
        held = {(r.shard, r.offset) for r in known.values() if r.status == "ok"}  # what the shards hold
        assert set(ledger.shards_to_prune()) == {s for s, o in held if not any(k[:1] == (s,) and k[2] == o
                                                                                for k in kept)}


@settings(max_examples=150, deadline=None)
@given(case=cases(all_fetched=False))
def test_windows_grow_until_a_url_is_pending_or_no_class_can_grow(tmp_path_factory, case):
    listed, lists, known, cap = case
    with ledger_with(tmp_path_factory.mktemp("ledger") / "ledger.sqlite", listed, known) as ledger:
        windows = download.plan(ledger, cap)
        assert (windows, list(ledger.pending())) == reference_plan(lists, known, cap)
        chunks = list(download.chunks_of(ledger.pending_chunks(3)))
        assert sorted(e for c in chunks for e in c.entries) == sorted(ledger.pending())
        assert all(0 < len(c.entries) <= 3 for c in chunks)


@settings(max_examples=150, deadline=None)
@given(case=cases(all_fetched=False), data=st.data())
def test_chunks_depend_on_the_plan_only_so_a_resumed_run_cuts_the_same_ones(tmp_path_factory, case, data):
    """Whole chunks recorded by a killed run, one or more left: the rest are cut as an uninterrupted run cut them."""
    listed, lists, known, cap = case
    with ledger_with(tmp_path_factory.mktemp("ledger") / "ledger.sqlite", listed, known) as ledger:
        download.plan(ledger, cap)
        chunks = list(download.chunks_of(ledger.pending_chunks(3)))
        if not chunks:
            return
        done = data.draw(st.sets(st.integers(0, len(chunks) - 1), max_size=len(chunks) - 1))
        finished = (fetched_row(cls, url, data.draw) for i in done for cls, url in chunks[i].entries)
        ledger.add_rows(finished, "killed.csv")
        download.plan(ledger, cap)
        assert list(download.chunks_of(ledger.pending_chunks(3))) == [c for i, c in enumerate(chunks) if i not in done]


def test_a_repeat_of_a_kept_image_past_the_cap_is_a_duplicate(tmp_path):
    lists = {"cat": URLS[:3]}
    known = {("cat", url): stored("cat", sha, url=url) for url, sha in zip(URLS, DIGESTS[:2] + DIGESTS[:1])}
    with ledger_with(tmp_path / "ledger.sqlite", lists, known) as ledger:
        ledger.set_windows({"cat": 3}, 0)
        ledger.save_manifest(1)
        assert [(r.status, r.reason) for r in ledger.manifest()] == [
            ("ok", ""), ("skipped", "enough_images"), ("skipped", "duplicate")]


def test_an_ok_row_wins_over_others_and_a_record_file_is_read_once(tmp_path):
    url = URLS[0]
    failed = Row(url=url, cls="cat", status="failed", reason="timeout", attempts=3)
    ok = stored("cat", DIGESTS[0], url=url, width=9, height=9)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_list("cat", iter([(url, "")]))
        assert ledger.add_rows(iter([failed]), "one.csv")
        assert ledger.add_rows(iter([ok]), "two.csv")
        assert ledger.add_rows(iter([failed]), "three.csv")
        assert not ledger.add_rows(iter([failed]), "one.csv")
        assert list(ledger.fetched("ok")) == [ok] and list(ledger.fetched("failed")) == []
    assert not (tmp_path / "ledger.sqlite").exists()  # scratch: gone with the run


def test_chunks_are_drawn_only_as_earlier_ones_finish_and_summaries_come_in_order():
    drawn = []

    def chunks():
        for n in range(10):
            drawn.append(n)
            yield n

    def submit(n):
        future = Future()
        future.set_result(n * 10)
        return future

    summaries = runners.bounded(submit, chunks(), limit=3)
    assert next(summaries) == 0 and drawn == [0, 1, 2]
    assert list(summaries) == [10 * n for n in range(1, 10)]
