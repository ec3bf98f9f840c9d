"""Where each class's image URLs come from, and the parsers for what they say.

Five kinds of source (`data.source`, or `classes.<name>.source` per class):

- imagenet_api: ImageNet's old endpoint, one list per wnid (text or HTML);
- url_list: a text file per class, or one shared file in ImageNet's
  fall11_urls.txt format (`<wnid>_<n><TAB><url>`) filtered by each class's wnid;
- html: web pages; their <img src/srcset> and <a href> links to image files;
- archive: a .tar, .tar.gz or .zip with one folder per class, extracted safely;
- folder: local folders of images.

Web sources yield http(s) URLs. Local images (folders, extracted archives) are
listed as `file:` entries, which the download step reads only from the folders
configured here (`local_roots`). Sources named in params are trusted hosts; what
they link to is not (see `tasks.web`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urljoin, urlsplit

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

from tasks import files, paths, web
from tasks.config import Data
from tasks.errors import StepError

ARCHIVE_DIR = f"{paths.URLS}/archive"  # an archive source's extracted class folders
MAX_MEMBERS = 1_000_000  # entries an archive may hold
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SHARED_LINE = re.compile(r"^(n\d{8})_\S*\s+(\S+)")


class SourceError(StepError):
    """A source could not be read; the message says which and why."""


def is_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() in ("http", "https")


def _web_only(urls: Iterable[str]) -> list[str]:
    """http(s) URLs, in order, without repeats."""
    return list(dict.fromkeys(u for u in urls if u.lower().startswith(("http://", "https://")) and not web.url_problem(u)))


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
    """http(s) URLs from a URL-list body (plain text or HTML), in order, without repeats."""
    text = _soup(body).get_text("\n")
    return _web_only(line.strip() for line in text.splitlines())


def parse_shared_list(lines: Iterable[str], wnids: set[str]) -> dict[str, list[str]]:
    """URLs per wnid from fall11_urls.txt-style lines (`<wnid>_<n><TAB><url>`); other lines are skipped."""
    found: dict[str, list[str]] = {wnid: [] for wnid in wnids}
    for line in lines:
        match = SHARED_LINE.match(line)
        if match and match.group(1) in found:
            found[match.group(1)].append(match.group(2))
    return {wnid: _web_only(urls) for wnid, urls in found.items()}


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
    """A folder-source class's folder: its own path, or `data.folder/<folder, wnid or name>`."""
    spec = data.classes[name]
    root = Path(data.folder) if data.folder else Path()
    return workdir / root / (spec.folder or spec.wnid or name)


def local_roots(data: Data, workdir: Path) -> list[Path]:
    """The only folders `file:` entries may be read from."""
    roots = [workdir / ARCHIVE_DIR]
    roots += [folder_of(data, name, workdir) for name in data.classes if data.source_of(name) == "folder"]
    return [root.resolve() for root in roots]


def list_folder(folder: Path, workdir: Path) -> list[str]:
    if not folder.is_dir():
        raise SourceError(f"image folder not found: {folder}")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [local_entry(p, workdir) for p in found]


def local_inputs(data: Data, workdir: Path) -> list[Path]:
    """The local files and folders the params name as sources (URL lists, archives, image folders)."""
    named = [data.url_list, data.archive, *(spec.url_list for spec in data.classes.values())]
    found = [workdir / location for location in named if location and not is_url(location)]
    found += [folder_of(data, n, workdir) for n in data.classes if data.source_of(n) == "folder"]
    return found


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
        raise SourceError(f"could not fetch {what} from {location}: {got.reason}")
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
            raise SourceError(f"could not fetch {what} from {location}: {got.reason}")
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


# --- archives ------------------------------------------------------------------


def _unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts or "\0" in name


def _class_of(name: str, folders: dict[str, str]) -> str | None:
    """The class whose folder name is one of the member's directories."""
    for part in PurePosixPath(name).parts[:-1]:
        if part in folders:
            return folders[part]
    return None


def _members(archive: Path) -> Iterator[tuple[str, int, bool, callable]]:
    """(name, size, is a regular file, opener) for each member of a tar or zip archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                yield info.filename, info.file_size, not (info.is_dir() or is_link), lambda i=info: z.open(i)
        return
    try:
        with tarfile.open(archive) as tar:
            for member in tar:  # streamed: a .tar.gz is read once, front to back
                yield member.name, member.size, member.isfile(), lambda m=member: tar.extractfile(m)
    except tarfile.TarError as exc:
        raise SourceError(f"{archive.name}: not a readable .tar, .tar.gz or .zip archive ({exc})") from None


def extract(archive: Path, dest: Path, folders: dict[str, str], max_bytes: int, workdir: Path) -> dict[str, list[str]]:
    """Extract the members under the classes' folders into `dest`; entries per class.

    Only regular files are written (links and devices are skipped), each under
    `dest` at its own path. An absolute or `..` name, more than MAX_MEMBERS entries
    or more than `max_bytes` in all refuses the archive.
    """
    shutil.rmtree(dest, ignore_errors=True)
    found: dict[str, list[str]] = {cls: [] for cls in folders.values()}
    total = count = 0
    for name, size, regular, open_member in _members(archive):
        count += 1
        if count > MAX_MEMBERS:
            raise SourceError(f"{archive.name}: more than {MAX_MEMBERS} entries; refused")
        if _unsafe(name):
            raise SourceError(f"{archive.name}: unsafe entry {name!r} (absolute or outside the archive); refused")
        cls = _class_of(name, folders)
        if not regular or cls is None or PurePosixPath(name).name.startswith("."):
            continue
        total += size
        if total > max_bytes:
            raise SourceError(f"{archive.name}: extracts to more than data.max_bytes={max_bytes}; refused")
        target = dest / PurePosixPath(name)
        with open_member() as src, files.atomic_path(target) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        found[cls].append(local_entry(target, workdir))
    return {cls: sorted(entries) for cls, entries in found.items()}


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
    if "archive" not in by_source:
        shutil.rmtree(workdir / ARCHIVE_DIR, ignore_errors=True)
    return {name: lists[name] for name in data.classes}


def _imagenet_api(data: Data, names, client, workdir) -> dict[str, list[str]]:
    lists = {}
    for name in names:
        wnid = data.classes[name].wnid
        url = data.url_list_endpoint.format(wnid=wnid)
        got = client.get(url)
        if not got.ok:
            raise SourceError(f"could not fetch the URL list for {wnid} from {url}: {got.reason}")
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
    folders = {(data.classes[n].folder or data.classes[n].wnid or n): n for n in names}
    with local_copy(data.archive, client, workdir, "the archive") as path:
        return extract(path, workdir / ARCHIVE_DIR, folders, data.max_bytes, workdir)


def _folder(data: Data, names, client, workdir) -> dict[str, list[str]]:
    return {name: list_folder(folder_of(data, name, workdir), workdir) for name in names}


READERS = {"imagenet_api": _imagenet_api, "url_list": _url_list, "html": _html, "archive": _archive,
           "folder": _folder}
