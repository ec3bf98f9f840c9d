"""split, property-based: deterministic, stable under additions, stratified, disjoint."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from tasks import split
from tasks.storage import files

digests = st.integers(0, 10**9).map(lambda i: files.sha256_bytes(str(i).encode()))
images = st.lists(digests, unique=True, max_size=60)


def assign(digests: list[str], fraction: float, seed: int) -> dict[str, str]:
    return {d: split.subset(d, fraction, seed) for d in digests}


@given(images, images, st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_adding_images_never_moves_an_assigned_one(old, new, fraction, seed):
    before = assign(old, fraction, seed)
    after = assign(old + [d for d in new if d not in before], fraction, seed)
    assert all(after[d] == subset for d, subset in before.items())


@given(images, st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_the_split_is_a_function_of_digest_and_seed_only(digests, fraction, seed):
    assert assign(digests, fraction, seed) == assign(digests[::-1], fraction, seed)
    assert set(assign(digests, fraction, seed).values()) <= {"train", "validation"}


def test_each_class_gets_its_share():
    validation = Counter(c for c in "ab" for i in range(2000)
                         if split.subset(files.sha256_bytes(f"{c}{i}".encode()), 0.2, 42) == "validation")
    assert all(0.17 <= validation[c] / 2000 <= 0.23 for c in "ab")
