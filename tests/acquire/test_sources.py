"""Image sources: the URL-list parsers (property-based), safe archive extraction, each source end to end."""

from __future__ import annotations

import functools
import io
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hostile import jpeg, photo
from tasks import download, fetch_urls, paths, split
from tasks.acquire import archives, sources
from tasks.errors import StepError
from tasks.params import ConfigError, validate
from tasks.storage import files, shards

# --- parsers, property-based ---------------------------------------------------------

urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
    st.sampled_from(["http", "https", "HTTP"]),
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,4}){0,2}", fullmatch=True),
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    st.from_regex(r"[A-Za-z0-9._~%/-]{0,20}(\?[a-z0-9=&]{0,10})?", fullmatch=True).map(lambda p: p.replace("&", "")),
)
# Lines that are not URLs: any text without "http", "<", "&" or line breaks.
junk = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<&\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
               max_size=30).filter(lambda t: "http" not in t.lower())


@given(st.lists(st.one_of(urls.map(lambda u: ("url", u)), junk.map(lambda j: ("junk", j))), max_size=30),
       st.sampled_from(["\n", "\r\n"]), st.booleans())
@example([("url", "http://0/"), ("junk", "䰡𗭡"), ("url", "http://0/~")], "\n", False)  # not read as Shift-JIS
def test_url_list_parser_keeps_every_line_in_order_without_repeats(lines, newline, as_html):
    """Lines that are no URL are kept too: the download gives each its manifest row and reason."""
    body = newline.join(text for _, text in lines)
    if as_html:
        body = f"<html><body>{body.replace(newline, '<br>' + newline)}</body></html>"
    parsed = sources.parse_url_list(body.encode())
    urls = list(dict.fromkeys(text for kind, text in lines if kind == "url"))
    assert [e for e in parsed if e in urls] == urls  # every URL, in order, once
    if not as_html:  # the text itself: every other non-empty line too, stripped
        assert parsed == list(dict.fromkeys(t.strip() for _, t in lines if t.strip()))


wnids = st.sampled_from(["n00000001", "n00000002", "n00000003"])


@given(st.lists(st.one_of(st.tuples(wnids, st.integers(0, 10**6), urls), junk), max_size=40),
       st.sets(wnids, min_size=1))
def test_shared_list_parser_keeps_each_wanted_wnids_urls_in_order(records, wanted):
    lines = [f"{r[0]}_{r[1]}\t{r[2]}\n" if isinstance(r, tuple) else r + "\n" for r in records]
    parsed = sources.parse_shared_list(lines, wanted)
    assert set(parsed) == wanted
    for wnid in wanted:
        assert parsed[wnid] == list(dict.fromkeys(r[2] for r in records if isinstance(r, tuple) and r[0] == wnid))


@given(st.text(max_size=300), urls)
@settings(max_examples=200)
def test_page_parser_never_fails_and_yields_only_absolute_web_urls(page, base):
    for url in sources.image_links(page, base):
        assert url.lower().startswith(("http://", "https://")) and not sources.web.url_problem(url)


def test_page_parser_reads_img_srcset_and_links_to_image_files():
    page = b"""<html><head><base href="/gallery/"></head><body>
      <img src="a.jpg"><img data-src="//cdn.example/b.png" src="data:image/gif;base64,R0lGOD">
      <picture><source srcset="c-1x.webp 1x, c-2x.webp 2x"><img src="/c.jpg" srcset="d.jpg 640w, e.jpg 1280w"></picture>
      <a href="f.JPEG">photo</a> <a href="page.html">next</a> <a href="javascript:void(0)">x</a>
      <img src="ftp://example.com/g.jpg"> <img src="a.jpg">
    </body></html>"""
    assert sources.image_links(page, "https://example.com/index.html") == [
        "https://example.com/gallery/a.jpg", "https://cdn.example/b.png", "https://example.com/gallery/c-1x.webp",
        "https://example.com/gallery/c-2x.webp", "https://example.com/c.jpg", "https://example.com/gallery/d.jpg",
        "https://example.com/gallery/e.jpg", "https://example.com/gallery/f.JPEG"]


# --- archives ---------------------------------------------------------------------------


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


IMAGENETTE = {
    "imagenette/train/n00000001/a1.JPEG": jpeg(photo(21)),
    "imagenette/train/n00000001/a2.JPEG": jpeg(photo(22)),
    "imagenette/val/n00000001/a3.JPEG": jpeg(photo(23)),
    "imagenette/train/n00000002/b1.JPEG": jpeg(photo(24)),
    "imagenette/train/n00000009/other.JPEG": jpeg(photo(25)),  # a class nobody asked for
    "imagenette/noisy_labels.csv": b"path,label\n",
}


def make_plain_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:  # uncompressed: read in place
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def archive_lists(workdir: Path, archive: Path, max_bytes: int = 10**6) -> dict[str, list[str]]:
    cfg = validate({"data": {"source": "archive", "archive": str(archive), "max_bytes": max_bytes,
                             "classes": {"a": {"wnid": "n00000001"}, "b": {"wnid": "n00000002"}}}})
    return sources.class_lists(cfg.data, workdir)


def member(entry: str) -> str:
    """The member name a `tar:` list line names."""
    return archives.ENTRY.match(entry.split("\t")[0])["name"]


def read_entry(entry: str, workdir: Path) -> bytes:
    path, offset, size = archives.parse(entry.split("\t")[0], workdir)
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


@pytest.mark.parametrize("maker", [make_tar, make_zip, make_plain_tar])
def test_an_archive_gives_the_class_folders_images_in_place_or_repacked_once(tmp_path, maker):
    archive = maker(tmp_path / {make_tar: "a.tgz", make_zip: "a.zip", make_plain_tar: "a.tar"}[maker], IMAGENETTE)
    found = archive_lists(tmp_path, archive)
    names = {cls: [member(e) for e in entries] for cls, entries in found.items()}
    assert names == {"a": ["imagenette/val/n00000001/a3.JPEG", "imagenette/train/n00000001/a1.JPEG",
                           "imagenette/train/n00000001/a2.JPEG"],  # the validation image first
                     "b": ["imagenette/train/n00000002/b1.JPEG"]}
    assert [e.split("\t")[1] for e in found["a"]] == ["validation", "train", "train"]
    for entries in found.values():
        for entry in entries:
            assert read_entry(entry, tmp_path) == IMAGENETTE[member(entry)]
    repacked = tmp_path / sources.REPACKED
    if maker is make_plain_tar:  # read where it is: nothing copied
        assert not repacked.exists() and all(e.startswith("tar:a.tar#") for e in found["a"])
    else:  # one plain tar of the wanted members, not a file per image
        assert sorted(name for name, *_ in shards.members(repacked)) == sorted(
            n for n in IMAGENETTE if "/n00000001/" in n or "/n00000002/" in n)
        assert [p.name for p in (tmp_path / paths.URLS).iterdir()] == ["archive.tar"]


@pytest.mark.parametrize("name", ["../evil.jpg", "/etc/evil.jpg", "imagenette/train/n00000001/../../../evil.jpg",
                                  "C:/evil.jpg"])
@pytest.mark.parametrize("maker", [make_tar, make_zip, make_plain_tar])
def test_archive_with_a_path_out_of_the_target_is_refused(tmp_path, maker, name):
    archive = maker(tmp_path / "bad.arc", {**IMAGENETTE, name: b"evil"})
    with pytest.raises(StepError, match="unsafe entry"):
        archive_lists(tmp_path, archive)
    assert not list(tmp_path.rglob("evil.jpg")) and not (tmp_path / sources.REPACKED).exists()


def test_archive_links_are_never_read(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg(photo(26)))
    archive = make_tar(tmp_path / "links.tgz", IMAGENETTE, links={
        "imagenette/train/n00000001/link.jpg": str(secret), "imagenette/train/n00000001/up.jpg": "../../../secret.jpg"})
    found = archive_lists(tmp_path, archive)
    assert len(found["a"]) == 3 and not any("link" in e or "up.jpg" in e for e in found["a"])


def test_archive_bigger_than_the_limit_is_refused(tmp_path):
    archive = make_zip(tmp_path / "big.zip", {"x/n00000001/big.jpg": b"\0" * 50_000})
    with pytest.raises(StepError, match="data.max_bytes"):
        archive_lists(tmp_path, archive, max_bytes=10_000)


def test_a_file_that_is_no_archive_is_a_clear_error(tmp_path):
    (tmp_path / "not.tgz").write_bytes(b"hello")
    with pytest.raises(StepError, match="not a readable"):
        archive_lists(tmp_path, tmp_path / "not.tgz")


def test_an_archive_cut_short_is_a_clear_error(tmp_path):
    whole = make_plain_tar(tmp_path / "whole.tar", IMAGENETTE).read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[:5000])
    with pytest.raises(StepError, match="cut short"):
        archive_lists(tmp_path, tmp_path / "cut.tar")


# --- every source, end to end -----------------------------------------------------------------


@pytest.fixture
def site(tmp_path):
    """A static web server on 127.0.0.1 over tmp_path/site."""
    root = tmp_path / "site"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.root, server.base = root, f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def test_every_source_kind_feeds_the_download(tmp_path, site):
    work = tmp_path / "work"
    (work / "lists").mkdir(parents=True)
    for i in range(12):
        (site.root / f"{i}.jpg").write_bytes(jpeg(photo(100 + i)))
    img = [f"{site.base}/{i}.jpg" for i in range(12)]
    (site.root / "gallery.html").write_text("<img src='0.jpg'><a href='/1.jpg'>big</a><img srcset='2.jpg 2x'>")
    (work / "lists" / "own.txt").write_text(f"{img[3]}\r\n{img[4]}\r\nnot a url\r\n")
    (site.root / "fall11_urls.txt").write_text(
        f"n00000003_1\t{img[5]}\nn00000099_1\t{img[0]}\nn00000003_2\t{img[6]}\n")
    make_tar(site.root / "imagenette.tgz", {"x/train/n00000004/a.jpg": jpeg(photo(120)),
                                            "x/val/n00000004/b.jpg": jpeg(photo(121))})
    folder = tmp_path / "photos" / "e"
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(jpeg(photo(130 + i)))
    cfg = validate({
        "data": {
            "source": "url_list", "url_list": f"{site.base}/fall11_urls.txt", "archive": f"{site.base}/imagenette.tgz",
            "url_list_endpoint": f"{site.base}/api?wnid={{wnid}}",
            "classes": {
                "a": {"source": "html", "pages": [f"{site.base}/gallery.html"]},
                "b": {"url_list": "lists/own.txt"},
                "c": {"wnid": "n00000003"},
                "d": {"wnid": "n00000004", "source": "archive"},
                "e": {"source": "folder", "folder": str(folder)},
            }},
        "download": {"min_images_per_class": 2, "timeout_s": 5},
    })
    fetch_urls.run(cfg, work)
    lists = {c: (work / paths.URLS / f"{c}.txt").read_text().splitlines() for c in "abcde"}
    assert lists["a"] == img[:3] and lists["b"] == [*img[3:5], "not a url"] and lists["c"] == img[5:7]
    assert [member(e) for e in lists["d"]] == ["x/val/n00000004/b.jpg", "x/train/n00000004/a.jpg"]
    assert [e.split("\t")[1] for e in lists["d"]] == ["validation", "train"]
    assert lists["e"] == [(folder / "0.png").as_uri(), (folder / "1.png").as_uri()]
    summary = download.run(cfg, work)
    assert summary["ok"] == {"a": 3, "b": 2, "c": 2, "d": 2, "e": 2}
    manifest = pd.read_csv(work / paths.MANIFEST, keep_default_na=False)
    assert manifest.loc[manifest["status"] != "ok", ["url", "reason"]].values.tolist() == [["not a url", "invalid_url"]]
    assert manifest.loc[manifest["class"] == "d", "source_subset"].tolist() == ["validation", "train"]
    assert not list((work / paths.URLS).glob(".*tmp*"))  # the downloaded archive is gone


def test_a_missing_source_is_a_clear_error(tmp_path):
    cfg = validate({"data": {"source": "folder", "folder": "nowhere"}})
    with pytest.raises(sources.SourceError, match="image folder not found"):
        fetch_urls.run(cfg, tmp_path)
    cfg = validate({"data": {"source": "archive", "archive": "nowhere.tgz"}})
    with pytest.raises(sources.SourceError, match="file not found"):
        fetch_urls.run(cfg, tmp_path)


@pytest.mark.parametrize("data, hint", [
    ({"source": "html"}, "classes.bikes (source html) needs pages"),
    ({"source": "archive"}, "needs data.archive"),
    ({"source": "url_list", "classes": {"a": {"wnid": "n00000001"}, "b": {}}}, "classes.a (source url_list)"),
    ({"classes": {"a": {"wnid": "n00000001"}, "b": {"source": "folder"}}}, "classes.b (source folder) needs"),
])
def test_a_class_without_what_its_source_needs_fails_at_load(data, hint):
    with pytest.raises(ConfigError, match=hint.replace("(", r"\(").replace(")", r"\)")):
        validate({"data": data})


def test_every_line_of_a_list_gets_a_manifest_row_with_its_reason(tmp_path, site):
    work = tmp_path / "work"
    (site.root / "0.jpg").write_bytes(jpeg(photo(140)))
    (site.root / "1.jpg").write_bytes(jpeg(photo(141)))
    lines = [f"{site.base}/0.jpg", "ftp://127.0.0.2/a.jpg", "file:/etc/hostname", "javascript:alert(1)",
             "http://[::1", "not a url", "tar:/etc/hostname#0+10/x.jpg", f"{site.base}/1.jpg"]
    (site.root / "a.txt").write_text("\n".join(lines) + "\n")
    cfg = validate({"data": {"source": "url_list", "embedded_mirror": False,
                             "classes": {"a": {"url_list": f"{site.base}/a.txt"}, "b": {"url_list": "b.txt"}}},
                    "download": {"min_images_per_class": 1}})
    work.mkdir()
    (work / "b.txt").write_text(f"{site.base}/b.jpg\n")
    (site.root / "b.jpg").write_bytes(jpeg(photo(142)))
    fetch_urls.run(cfg, work)
    assert (work / paths.URLS / "a.txt").read_text().splitlines() == lines  # nothing dropped
    download.run(cfg, work)
    manifest = pd.read_csv(work / paths.MANIFEST, keep_default_na=False)
    rows = manifest[manifest["class"] == "a"]
    assert rows["url"].tolist() == lines
    assert rows["reason"].tolist() == ["", "bad_scheme", "blocked_path", "bad_scheme", "invalid_url", "invalid_url",
                                       "blocked_path", ""]


def test_a_folder_with_train_and_val_gives_the_split_its_official_validation_set(tmp_path):
    root = tmp_path / "imagenette2-160"
    images = {}
    for subset in ("train", "val"):
        for c, wnid in enumerate(["n00000001", "n00000002"]):
            for i in range(3 if subset == "train" else 2):
                path = root / subset / wnid / f"{subset}{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg(photo(200 + 10 * c + i + (5 if subset == "val" else 0))))
                images[path] = subset
    cfg = validate({"data": {"source": "folder", "folder": "imagenette2-160", "embedded_mirror": False,
                             "classes": {"a": {"wnid": "n00000001"}, "b": {"wnid": "n00000002"}}},
                    "download": {"min_images_per_class": 1}, "split": {"validation": "source"}})
    fetch_urls.run(cfg, tmp_path)
    lines = (tmp_path / paths.URLS / "a.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["validation"] * 2 + ["train"] * 3
    download.run(cfg, tmp_path)
    split.run(cfg, tmp_path)
    table = pd.read_csv(tmp_path / paths.SPLIT)
    digests = {files.sha256_bytes(p.read_bytes()): s for p, s in images.items()}
    assert {row.sha256: row.subset for row in table.itertuples()} == {
        d: "validation" if s == "val" else "train" for d, s in digests.items()}
