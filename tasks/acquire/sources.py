"""Where each class's image URLs come from, and the parsers for what they say.

Six kinds of source (`data.source`, or `classes.<name>.source` per class):

- imagenet_api: ImageNet's old endpoint, one list per wnid (text or HTML);
- url_list: a text file per class, or one shared file in ImageNet's
  fall11_urls.txt format (`<wnid>_<n><TAB><url>`) filtered by each class's wnid;
- html: web pages; their <img src/srcset> and <a href> links to image files;
- archive: a .tar, .tar.gz or .zip with one folder per class (Imagenette's layout);
- ilsvrc2012: the ILSVRC-2012 archives as ImageNet distributes them;
- folder: local folders of images.

A list has an entry per line: an http(s) URL, a `file:` entry for a local image
(read only from the folders configured here, `local_roots`), or a `tar:` entry for
an image inside an archive (`tasks.acquire.archives`; read only from the archives
configured here, `local_archives`), followed, when the source says which subset an
image belongs to (ILSVRC-2012's validation set, an archive's `val/` folder), by a
tab and `train` or `validation`. Sources named in params are trusted hosts; what
they link to is not (see `tasks.acquire.web`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urljoin, urlsplit

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

from tasks import paths
from tasks.acquire import archives, web
from tasks.config import Data
from tasks.errors import NetworkError, StepError

REPACKED = f"{paths.URLS}/archive.tar"  # a compressed or remote archive's class folders, as a plain tar
SUBSETS = ("train", "validation")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SHARED_LINE = re.compile(r"^(n\d{8})_\S*\s+(\S+)")


class SourceError(StepError):
    """A source could not be read; the message says which and why."""


class Unreachable(SourceError, NetworkError):
    """A source that did not answer as it should: retried, as a later try may succeed."""


def is_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() in ("http", "https")


def _web_only(urls: Iterable[str]) -> list[str]:
    """http(s) URLs, in order, without repeats (for links found in pages, which are not entries of a list)."""
    web_urls = (u for u in urls if u.lower().startswith(("http://", "https://")) and not web.url_problem(u))
    return list(dict.fromkeys(web_urls))


def _entries(lines: Iterable[str]) -> list[str]:
    """Every non-empty line of a list, in order, without repeats. Nothing is dropped here: the
    download gives each line a manifest row, and a line that is no http(s) URL gets its reason
    there (bad_scheme, invalid_url, blocked_path)."""
    return list(dict.fromkeys(line for line in (raw.strip() for raw in lines) if line))


# --- parsers -----------------------------------------------------------------


def _soup(body: bytes | str) -> BeautifulSoup:
    if isinstance(body, bytes):
        # Valid UTF-8 is UTF-8: the guess BeautifulSoup would make depends on which
        # charset detector happens to be installed (one reads `~` as Shift-JIS `‾`).
        with contextlib.suppress(UnicodeDecodeError):
            body = body.decode("utf-8")
    with warnings.catch_warnings():  # a list of one URL "looks like a URL": it is one
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        return BeautifulSoup(body, "html.parser")


def parse_url_list(body: bytes | str) -> list[str]:
    """The entries of a URL-list body (plain text, or the text of HTML), in order, without repeats."""
    return _entries(_soup(body).get_text("\n").splitlines())


def parse_shared_list(lines: Iterable[str], wnids: set[str]) -> dict[str, list[str]]:
    """Entries per wnid from fall11_urls.txt-style lines (`<wnid>_<n><TAB><url>`); lines of other wnids are skipped."""
    found: dict[str, list[str]] = {wnid: [] for wnid in wnids}
    for line in lines:
        match = SHARED_LINE.match(line)
        if match and match.group(1) in found:
            found[match.group(1)].append(match.group(2))
    return {wnid: _entries(urls) for wnid, urls in found.items()}


def image_links(html: bytes | str, page_url: str) -> list[str]:
    """Image URLs on a page: <img>/<source> src and srcset, and <a href> to image files, made absolute."""
    soup = _soup(html)
    base_tag = soup.find("base", href=True)
    base = urljoin(page_url, base_tag["href"]) if base_tag else page_url
    found = []
    for tag in soup.find_all(["img", "source", "a"]):
        if tag.name == "a":
            href = tag.get("href", "")
            if urlsplit(href).path.lower().endswith(IMAGE_EXTENSIONS):
                found.append(href)
            continue
        found += [tag.get(attr) for attr in ("src", "data-src") if tag.get(attr)]
        for srcset in (tag.get("srcset"), tag.get("data-srcset")):
            found += [part.strip().split()[0] for part in (srcset or "").split(",") if part.strip()]
    return _web_only(urljoin(base, link.strip()) for link in found)


# --- local entries -------------------------------------------------------------


def local_entry(path: Path, workdir: Path) -> str:
    """A list entry for a local file: `file:<path relative to workdir>`, or an absolute file URI."""
    path = Path(os.path.abspath(path))
    try:
        return "file:" + quote(path.relative_to(workdir.resolve()).as_posix())
    except ValueError:
        return path.as_uri()


def local_path(entry: str, workdir: Path) -> Path:
    """The file a `file:` entry names (relative entries are under workdir)."""
    parts = urlsplit(entry)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file: {entry}")
    return workdir / unquote(parts.path)


def folder_of(data: Data, name: str, workdir: Path) -> Path:
    """Where a folder-source class's images are looked for: its own folder, or all of `data.folder`
    (where folders named after it are found at any depth: `<wnid>/`, or `train/<wnid>/` and `val/<wnid>/`)."""
    return workdir / (data.folder or data.classes[name].folder or "")


def local_roots(data: Data, workdir: Path) -> list[Path]:
    """The only folders `file:` entries may be read from."""
    roots = {folder_of(data, name, workdir) for name in data.classes if data.source_of(name) == "folder"}
    return [root.resolve() for root in roots]


def local_archives(data: Data, workdir: Path) -> list[Path]:
    """The only archives `tar:` entries may be read from."""
    found = [workdir / REPACKED, *(workdir / p for p in (data.ilsvrc2012.train, data.ilsvrc2012.val) if p)]
    if data.archive and not is_url(data.archive):
        found.append(workdir / data.archive)
    return [path.resolve() for path in found]


def containers(data: Data, workdir: Path, folders: bool = True) -> list[str]:
    """The local archives (and, with `folders`, image folders) the classes' sources read images from in place,
    as entries and the image index name them."""
    used = {data.source_of(name) for name in data.classes}
    found = [workdir / REPACKED, *([workdir / data.archive] if data.archive and not is_url(data.archive) else [])] \
        if "archive" in used else []
    if "ilsvrc2012" in used:
        found += [workdir / p for p in (data.ilsvrc2012.train, data.ilsvrc2012.val) if p]
    if folders and "folder" in used:
        found += local_roots(data, workdir)
    return [archives.location(path, workdir) for path in found]


def subset_of(name: str) -> str:
    """The subset an archive or folder path says an image is in: under `val/` or `validation/`, under
    `train/`, or neither ("")."""
    parts = {part.lower() for part in PurePosixPath(name).parts[:-1]}
    return "validation" if parts & {"val", "validation"} else "train" if "train" in parts else ""


def marked(entry: str, subset: str) -> str:
    """A list line: the entry, and the subset its source gives it, if any."""
    return f"{entry}\t{subset}" if subset else entry


def validation_first(lines: list[str]) -> list[str]:
    """Lines the source marks as validation before the others (so a cap on a class keeps them), else in order."""
    return sorted(lines, key=lambda line: not line.endswith("\tvalidation"))


def list_folder(folder: Path, workdir: Path, subsets_from: Path | None = None) -> list[str]:
    """Entries for every file under `folder` (dot files aside), each marked with the subset its path
    below `subsets_from` names, validation first."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    base = subsets_from or folder
    return validation_first([marked(local_entry(p, workdir), subset_of(p.relative_to(base).as_posix()))
                             for p in found])


def local_inputs(data: Data, workdir: Path) -> list[Path]:
    """The local files and folders the params name as sources (URL lists, archives, image folders)."""
    ilsvrc = data.ilsvrc2012 if any(data.source_of(n) == "ilsvrc2012" for n in data.classes) else None
    named = [data.url_list, data.archive, *(spec.url_list for spec in data.classes.values()),
             *((ilsvrc.train, ilsvrc.val, ilsvrc.devkit, ilsvrc.val_solution) if ilsvrc else ())]
    found = [workdir / location for location in named if location and not is_url(location)]
    found += [folder_of(data, n, workdir) for n in data.classes if data.source_of(n) == "folder"]
    return list(dict.fromkeys(found))


# --- fetching ------------------------------------------------------------------


def _locations(data: Data) -> list[str]:
    found = [data.url_list_endpoint, data.url_list or "", data.archive or ""]
    for spec in data.classes.values():
        found += [spec.url_list or "", *spec.pages]
    return [f for f in found if is_url(f)]


def fetcher(data: Data) -> web.Fetcher:
    """A fetcher that trusts the hosts the params name, and nothing they redirect to."""
    hosts = frozenset((urlsplit(u).hostname or "").lower() for u in _locations(data))
    limits = web.Limits(timeout_s=data.timeout_s, connect_timeout_s=10, read_timeout_s=60,
                        max_bytes=data.max_bytes, allowed_hosts=hosts)
    return web.Fetcher(limits)


def read_bytes(location: str, client: web.Fetcher, workdir: Path, what: str) -> bytes:
    if not is_url(location):
        path = workdir / location
        if not path.is_file():
            raise SourceError(f"{what}: file not found: {path}")
        return path.read_bytes()
    got = client.get(location)
    if not got.ok:
        raise Unreachable(f"could not fetch {what} from {location}: {got.reason}")
    return got.body


@contextlib.contextmanager
def local_copy(location: str, client: web.Fetcher, workdir: Path, what: str) -> Iterator[Path]:
    """A local file with the content of `location`: the file itself, or a download streamed to a temp file."""
    if not is_url(location):
        path = workdir / location
        if not path.is_file():
            raise SourceError(f"{what}: file not found: {path}")
        yield path
        return
    (workdir / paths.URLS).mkdir(parents=True, exist_ok=True)
    suffix = "".join(PurePosixPath(urlsplit(location).path).suffixes[-2:])
    fd, name = tempfile.mkstemp(dir=workdir / paths.URLS, prefix=".download.tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            got = client.get(location, sink=out)
        if not got.ok:
            raise Unreachable(f"could not fetch {what} from {location}: {got.reason}")
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


# --- archives ------------------------------------------------------------------


def class_folders(data: Data, names) -> dict[str, str]:
    """{folder name: class} for archive and folder sources: a class's `folder`, else its wnid, else its key."""
    return {(data.classes[n].folder or data.classes[n].wnid or n): n for n in names}


def _class_of(name: str, folders: dict[str, str]) -> str | None:
    """The class whose folder name is one of the member's directories."""
    for part in PurePosixPath(name).parts[:-1]:
        if part in folders:
            return folders[part]
    return None


def archive_lists(archive: Path, members: Iterable[archives.Member], folders: dict[str, str],
                  workdir: Path) -> dict[str, list[str]]:
    """Each class's entries for the members under its folder (dot files aside), validation first."""
    found: dict[str, list[str]] = {cls: [] for cls in folders.values()}
    for member in members:
        cls = _class_of(member[0], folders)
        if cls is not None and not PurePosixPath(member[0]).name.startswith("."):
            found[cls].append(marked(archives.entry(archive, member, workdir), subset_of(member[0])))
    return {cls: validation_first(entries) for cls, entries in found.items()}


def validation_labels(data: Data, workdir: Path) -> dict[str, str]:
    """{validation file name: wnid}, from Kaggle's LOC_val_solution.csv or the ILSVRC-2012 devkit."""
    spec = data.ilsvrc2012
    if spec.val_solution:
        path = required(spec.val_solution, "data.ilsvrc2012.val_solution", workdir)
        with open(path, newline="") as rows:
            try:
                return {f"{row['ImageId']}.JPEG": row["PredictionString"].split()[0] for row in csv.DictReader(rows)}
            except (KeyError, IndexError):
                raise SourceError(f"{path.name}: expected Kaggle's columns ImageId,PredictionString") from None
    devkit = required(spec.devkit, "data.ilsvrc2012.devkit", workdir)
    from scipy.io import loadmat  # MATLAB's format, as ImageNet ships the class table

    try:
        synsets = loadmat(io.BytesIO(archives.read_member(devkit, "meta.mat")), squeeze_me=True)["synsets"]
        truth = archives.read_member(devkit, "ILSVRC2012_validation_ground_truth.txt").split()
    except (ValueError, KeyError, OSError) as exc:
        raise SourceError(f"{devkit.name}: not the ILSVRC-2012 devkit ({exc})") from None
    wnid_of = {int(i): str(w) for i, w in zip(synsets["ILSVRC2012_ID"], synsets["WNID"])}
    return {f"ILSVRC2012_val_{n:08d}.JPEG": wnid_of[int(i)] for n, i in enumerate(truth, 1)}


def required(location: str | None, key: str, workdir: Path) -> Path:
    """A local file the params name, or a clear error naming the param."""
    path = workdir / (location or "")
    if not location or not path.is_file():
        raise SourceError(f"{key}: file not found: {path if location else '(not set)'}")
    return path


# --- per class -----------------------------------------------------------------


def class_lists(data: Data, workdir: Path) -> dict[str, list[str]]:
    """Every class's entries (http(s) URLs or local `file:` entries), in source order."""
    client = fetcher(data)
    lists: dict[str, list[str]] = {}
    try:
        by_source: dict[str, list[str]] = {}
        for name in data.classes:
            by_source.setdefault(data.source_of(name), []).append(name)
        for source, names in by_source.items():
            lists.update(READERS[source](data, names, client, workdir))
    finally:
        client.close()
    if "archive" not in by_source or (data.archive and not is_url(data.archive)
                                      and archives.is_plain_tar(workdir / data.archive)):
        (workdir / REPACKED).unlink(missing_ok=True)  # no longer read from
    return {name: lists[name] for name in data.classes}


def _imagenet_api(data: Data, names, client, workdir) -> dict[str, list[str]]:
    lists = {}
    for name in names:
        wnid = data.classes[name].wnid
        url = data.url_list_endpoint.format(wnid=wnid)
        got = client.get(url)
        if not got.ok:
            raise Unreachable(f"could not fetch the URL list for {wnid} from {url}: {got.reason}")
        lists[name] = parse_url_list(got.body)
    return lists


def _url_list(data: Data, names, client, workdir) -> dict[str, list[str]]:
    lists = {}
    shared = [n for n in names if not data.classes[n].url_list]
    for name in names:
        if own := data.classes[name].url_list:
            lists[name] = parse_url_list(read_bytes(own, client, workdir, f"the URL list of {name}"))
    if shared:
        wnids = {data.classes[n].wnid for n in shared}
        with local_copy(data.url_list, client, workdir, "the shared URL list") as path:
            with open(path, encoding="utf-8", errors="replace") as lines:
                per_wnid = parse_shared_list(lines, wnids)
        lists.update({n: per_wnid[data.classes[n].wnid] for n in shared})
    return lists


def _html(data: Data, names, client, workdir) -> dict[str, list[str]]:
    lists = {}
    for name in names:
        urls = []
        for page in data.classes[name].pages:
            urls += image_links(read_bytes(page, client, workdir, f"the page {page}"), page)
        lists[name] = list(dict.fromkeys(urls))
    return lists


def _archive(data: Data, names, client, workdir) -> dict[str, list[str]]:
    """An uncompressed local tar is read in place; anything else is repacked once into data/urls/archive.tar."""
    folders = class_folders(data, names)
    with local_copy(data.archive, client, workdir, "the archive") as path:
        if not is_url(data.archive) and archives.is_plain_tar(path):
            return archive_lists(path, archives.members(path), folders, workdir)
        repacked = archives.repack(path, workdir / REPACKED, lambda name: _class_of(name, folders) is not None,
                                   data.max_bytes)
        return archive_lists(workdir / REPACKED, repacked, folders, workdir)


def _ilsvrc2012(data: Data, names, client, workdir) -> dict[str, list[str]]:
    """ILSVRC2012_img_val.tar (labelled by the devkit or Kaggle's solution file) and ILSVRC2012_img_train.tar
    (a tar of per-class tars), read in place: the classes' images, validation first."""
    spec, wanted = data.ilsvrc2012, {data.classes[n].wnid: n for n in names}
    train = required(spec.train, "data.ilsvrc2012.train", workdir) if spec.train else None
    val = required(spec.val, "data.ilsvrc2012.val", workdir) if spec.val else None
    labels = validation_labels(data, workdir) if val else {}
    found: dict[str, list[str]] = {name: [] for name in names}
    for member in archives.members(val) if val else ():
        wnid = labels.get(PurePosixPath(member[0]).name)
        if wnid is None:
            raise SourceError(f"{val.name}: {member[0]} has no label in the validation labels given")
        if wnid in wanted:
            found[wanted[wnid]].append(marked(archives.entry(val, member, workdir), "validation"))
    inner = {f"{wnid}.tar" for wnid in wanted}
    for member in archives.members(train, nested=lambda name: name in inner) if train else ():
        wnid = member[0].split("/", 1)[0].removesuffix(".tar")
        found[wanted[wnid]].append(marked(archives.entry(train, member, workdir), "train"))
    return found


def _folder(data: Data, names, client, workdir) -> dict[str, list[str]]:
    """A class's own folder, or the folders named after it anywhere under `data.folder`."""
    for folder in {folder_of(data, name, workdir) for name in names}:
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
    if not data.folder:
        return {name: list_folder(folder_of(data, name, workdir), workdir) for name in names}
    root = workdir / data.folder
    searched = class_folders(data, names)
    lists: dict[str, list[str]] = {name: [] for name in names}
    for folder, subfolders, _ in os.walk(root):
        if (name := searched.get(os.path.basename(folder))) is not None and folder != str(root):
            lists[name] += list_folder(Path(folder), workdir, root)
            subfolders.clear()  # everything below is this class's
    if missing := [f for f, n in searched.items() if not lists[n]]:
        raise SourceError(f"image folder not found: no images in a folder named {missing[0]} under {root}")
    return {name: validation_first(entries) for name, entries in lists.items()}


READERS = {"imagenet_api": _imagenet_api, "url_list": _url_list, "html": _html, "archive": _archive,
           "ilsvrc2012": _ilsvrc2012, "folder": _folder}
