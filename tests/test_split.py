"""split, property-based: deterministic, stable under additions, stratified, disjoint."""

from __future__ import annotations

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from tasks import files, split

digests = st.integers(0, 10**9).map(lambda i: files.sha256_bytes(str(i).encode()))
images = st.lists(st.tuples(digests, st.sampled_from(["a", "b", "c"])), unique_by=lambda t: t[0], max_size=60)


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame({"path": [d for d, _ in rows], "class": [c for _, c in rows], "sha256": [d for d, _ in rows]},
                        columns=["path", "class", "sha256"])


@given(images, images, st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_adding_images_never_moves_an_assigned_one(old, new, fraction, seed):
    before = split.assign(frame(old), fraction, seed).set_index("sha256")["subset"]
    known = {d for d, _ in old}
    after = split.assign(frame(old + [r for r in new if r[0] not in known]), fraction, seed).set_index("sha256")["subset"]
    assert (after.loc[before.index] == before).all()


@given(images, st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_the_split_is_a_function_of_digest_and_seed_only(rows, fraction, seed):
    first = split.assign(frame(rows), fraction, seed).set_index("sha256")["subset"]
    shuffled = split.assign(frame(rows[::-1]), fraction, seed).set_index("sha256")["subset"]
    assert first.sort_index().equals(shuffled.sort_index())
    assert set(first) <= {"train", "validation"}


def test_each_class_gets_its_share():
    rows = [(files.sha256_bytes(f"{c}{i}".encode()), c) for c in "ab" for i in range(2000)]
    assigned = split.assign(frame(rows), 0.2, 42)
    share = assigned.groupby("class")["subset"].apply(lambda s: (s == "validation").mean())
    assert share.between(0.17, 0.23).all()
