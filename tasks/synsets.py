"""ImageNet's class sets, shipped with the package: `data.classes: imagenet1k` and the like.

A set is a list of WordNet ids (wnids) with human-readable names, in the standard
order (sorted wnids: index 0 is n01440764, tench, as torchvision and Keras number
them). `data.classes` takes a set's name, a path to a file of the same form (a wnid
per line, optionally a tab and a name; lines starting with `#` are comments), or explicit entries.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

SETS = ("imagenet1k", "imagenette", "imagewoof")
WNID = re.compile(r"^n\d{8}$")


def _read(text: str, origin: str) -> dict[str, str]:
    """{wnid: name} from lines `<wnid>[<tab or spaces><name>]`, in file order."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        wnid, _, name = line.partition("\t") if "\t" in line else line.partition(" ")
        if not WNID.match(wnid):
            raise ValueError(f"{origin}, line {number}: {wnid!r} is not a wnid (n followed by 8 digits)")
        if wnid in found:
            raise ValueError(f"{origin}, line {number}: {wnid} listed twice")
        found[wnid] = name.strip()
    if not found:
        raise ValueError(f"{origin}: no wnids in it")
    return found


def names(set_name: str = "imagenet1k") -> dict[str, str]:
    """A shipped set's {wnid: name}, in the standard order."""
    return _read((resources.files("tasks") / "classes" / f"{set_name}.tsv").read_text(), set_name)


def resolve(value: str) -> dict[str, dict]:
    """`data.classes` given as a set's name or a file: {wnid: {"wnid": ..., "name": ...}}."""
    if value in SETS:
        listed = names(value)
    elif Path(value).is_file():
        listed = _read(Path(value).read_text(), value)
        known = names()  # names from ImageNet-1k for wnids the file leaves unnamed
        listed = {wnid: name or known.get(wnid, "") for wnid, name in listed.items()}
    else:
        raise ValueError(f"{value!r} is neither a class set ({', '.join(SETS)}) nor a file of wnids")
    return {wnid: {"wnid": wnid, **({"name": name} if name else {})} for wnid, name in listed.items()}
