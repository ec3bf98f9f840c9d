"""Content digests remembered by file metadata: what changed is read again, nothing else."""

from __future__ import annotations

import os

from tasks.storage import files


def _folder(root, count: int):
    folder = root / "images"
    for i in range(count):
        (folder / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % 3}" / f"{i}.jpg").write_bytes(f"image {i}".encode())
        os.utime(folder / f"c{i % 3}" / f"{i}.jpg", ns=(10**18, 10**18))  # long before now: not racy
    return folder


def _counting(monkeypatch) -> list[str]:
    read = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda path: read.append(str(path)) or real(path))
    return read


def test_an_unchanged_folder_is_not_read_again_and_a_changed_file_is(tmp_path, monkeypatch):
    folder = _folder(tmp_path, 7)
    read = _counting(monkeypatch)
    with files.Digests(tmp_path) as digests:
        first = digests.path(folder)
    assert len(read) == 7
    with files.Digests(tmp_path) as digests:
        assert digests.path(folder) == first
    assert len(read) == 7  # the folder's fingerprint matched: no file read
    (folder / "c1" / "4.jpg").write_bytes(b"another image")
    with files.Digests(tmp_path) as digests:
        changed = digests.path(folder)
    assert changed != first and read[7:] == [str(folder / "c1" / "4.jpg")]


def test_digests_are_saved_as_they_accumulate_not_only_at_the_end(tmp_path, monkeypatch):
    folder = _folder(tmp_path, 7)
    monkeypatch.setattr(files, "FLUSH", 3)
    read = _counting(monkeypatch)
    digests = files.Digests(tmp_path)
    digests.path(folder)
    assert len(digests.fresh) < 3  # written in batches while hashing
    # Another process sees what was saved so far (the rest is written when the first closes).
    with files.Digests(tmp_path) as other:
        saved = other.db.execute("SELECT COUNT(*) FROM digests").fetchone()[0]
    assert saved == 6 and len(read) == 7
    digests.__exit__(None, None, None)
