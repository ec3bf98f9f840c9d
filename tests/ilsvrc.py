"""A miniature of the ILSVRC-2012 archives, with their exact layout and file names.

- ILSVRC2012_img_train.tar: a tar of per-class tars `<wnid>.tar`, each holding
  `<wnid>_<n>.JPEG`; among them a CMYK JPEG and a PNG named `.JPEG`, as in the real one.
- ILSVRC2012_img_val.tar: flat `ILSVRC2012_val_<8 digits>.JPEG`.
- ILSVRC2012_devkit_t12.tar.gz: `ILSVRC2012_devkit_t12/data/meta.mat` (the `synsets`
  struct: ILSVRC2012_ID, WNID, words, gloss, num_children, ...; the 1,000 classes are
  the entries without children, numbered in the devkit's own order, not by wnid) and
  `data/ILSVRC2012_validation_ground_truth.txt` (an ILSVRC2012_ID per validation image).
- LOC_val_solution.csv: Kaggle's labels (`ImageId,PredictionString`, the wnid first).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from hostile import cmyk_jpeg, jpeg, photo, png
from tasks import synsets


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _meta_mat(ids: dict[str, int]) -> bytes:
    """meta.mat as the devkit has it: leaf synsets with their ILSVRC2012_ID, and inner nodes with children."""
    from scipy.io import savemat

    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
              ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    names = synsets.names()
    rows = [(i, wnid, names[wnid], "a gloss", 0, np.zeros((1, 0)), 0, 1300) for wnid, i in ids.items()]
    rows += [(1001, "n00001740", "entity", "the root", 2, np.array([1, 2]), 18, 0)]  # not a class
    out = io.BytesIO()
    savemat(out, {"synsets": np.array(rows, dtype=fields).reshape(-1, 1)})
    return out.getvalue()


def make(folder: Path, wnids: list[str], train: int = 6, val: int = 3, others: int = 2) -> dict:
    """The four files in `folder`, for `wnids` (plus `others` validation images of another class).

    Returns what a reader should find: {"train": {wnid: [names]}, "val": {wnid: [names]}}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    all_wnids = list(synsets.names())
    ids = {wnid: i + 1 for i, wnid in enumerate(reversed(all_wnids))}  # the devkit's numbering, not sorted order
    found = {"train": {}, "val": {}}
    inner = {}
    for c, wnid in enumerate(wnids):
        members = {f"{wnid}_{n}.JPEG": jpeg(photo(1000 * c + n)) for n in range(train)}
        if c == 0:
            members[f"{wnid}_cmyk.JPEG"] = cmyk_jpeg()
            members[f"{wnid}_png.JPEG"] = png(photo(999))  # a PNG with a JPEG's name
        inner[f"{wnid}.tar"] = _tar(members)
        found["train"][wnid] = list(members)
    (folder / "ILSVRC2012_img_train.tar").write_bytes(_tar(inner))
    labels, images = [], {}
    other = next(w for w in all_wnids if w not in wnids)
    for n, wnid in enumerate([w for w in wnids for _ in range(val)] + [other] * others, 1):
        name = f"ILSVRC2012_val_{n:08d}"
        images[f"{name}.JPEG"] = jpeg(photo(50_000 + n))
        labels.append((name, wnid))
        found["val"].setdefault(wnid, []).append(f"{name}.JPEG")
    (folder / "ILSVRC2012_img_val.tar").write_bytes(_tar(images))
    truth = "".join(f"{ids[wnid]}\n" for _, wnid in labels).encode()
    (folder / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(_tar({
        "ILSVRC2012_devkit_t12/data/meta.mat": _meta_mat(ids),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth,
        "ILSVRC2012_devkit_t12/COPYING": b"devkit"}, "w:gz"))
    (folder / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{name},{wnid} 10 20 100 200 {wnid} 5 5 50 50\n" for name, wnid in labels))
    return found
