"""download against a hostile local host: every bad case has its reason, every good one is kept."""

from __future__ import annotations

import datetime
import gc
import io
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, merge
from hostile import BODIES, HostileServer, photo
from tasks import download, paths
from tasks.acquire import downloader, web
from tasks.params import validate
from tasks.step import StepError
from tasks.storage import files, shards

# Sub-second limits keep the slow cases fast; the deadline leaves room for one Retry-After: 1.
FAST = {
    "workers": 16, "timeout_s": 2.0, "connect_timeout_s": 0.5, "read_timeout_s": 0.3, "retries": 2,
    "backoff_s": 0.01, "max_redirects": 4, "max_bytes": 300_000, "min_side": 16, "max_side": 512,
    "max_pixels": 10_000_000, "min_images_per_class": 1, "allowed_hosts": ["127.0.0.1"], "chunk_size": 8,
}


def config(download_params: dict | None = None, **data):
    params = {
        "data": merge({"classes": {"a": {"wnid": "n00000001"}, "b": {"wnid": "n00000002"}}, "images_per_class": None},
                      data),
        "download": {**FAST, **(download_params or {})},
    }
    return validate(params)


def write_lists(workdir: Path, lists: dict[str, list[str]]) -> None:
    for cls, urls in lists.items():
        files.write_text(workdir / paths.URLS / f"{cls}.txt", "".join(f"{u}\n" for u in urls))


def fetch(workdir: Path, lists: dict[str, list[str]], cfg=None) -> tuple[pd.DataFrame, dict | None]:
    """Run the step; the summary is None when a class ended short (the manifest is written all the same)."""
    write_lists(workdir, lists)
    try:
        summary = download.run(cfg or config(), workdir)
    except StepError as exc:
        assert "too few good images" in str(exc)
        summary = None
    return pd.read_csv(workdir / paths.MANIFEST, keep_default_na=False), summary


def stored(workdir: Path, row) -> bytes:
    """The bytes a manifest row's image is stored as, read from its shard."""
    with shards.Reader() as reader:
        return reader.read(workdir / row.shard, row.offset, row.size)


def decoded(workdir: Path, row, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(stored(workdir, row), np.uint8), flags)


def on_disk(workdir: Path) -> list[str]:
    return sorted(p.relative_to(workdir).as_posix() for p in (workdir / paths.IMAGES).rglob("*") if p.is_file())


def outcome(manifest: pd.DataFrame, url: str, cls: str = "a") -> tuple[str, str]:
    row = manifest[(manifest["url"] == url) & (manifest["class"] == cls)].iloc[0]
    return row["status"], row["reason"]


@pytest.fixture
def host():
    with HostileServer() as server:
        yield server


EXPECTED = {
    "/good.jpg": ("ok", ""),
    "/good.png": ("ok", ""),
    "/gray.jpg": ("ok", ""),
    "/cmyk.jpg": ("ok", ""),
    "/alpha.png": ("ok", ""),
    "/deep.png": ("ok", ""),
    "/big.jpg": ("ok", ""),
    "/turned.jpg": ("ok", ""),
    "/big-turned.jpg": ("ok", ""),
    "/busy-once.jpg": ("ok", ""),
    "/down-once.jpg": ("ok", ""),
    "/hop/3": ("ok", ""),
    "/missing.jpg": ("failed", "http_404"),
    "/down.jpg": ("failed", "http_503"),
    "/loop.jpg": ("failed", "too_many_redirects"),
    "/to-forbidden.jpg": ("failed", "blocked_host"),
    "/to-ftp.jpg": ("failed", "bad_scheme"),
    "/page.jpg": ("failed", "not_image"),
    "/truncated.jpg": ("failed", "truncated"),
    "/cut.jpg": ("failed", "truncated"),
    "/corrupt.jpg": ("failed", "corrupt"),
    "/empty.jpg": ("failed", "empty"),
    "/tiny.png": ("failed", "too_small"),
    "/bomb.png": ("failed", "decompression_bomb"),
    "/bomb.jpg": ("failed", "decompression_bomb"),
    "/placeholder.jpg": ("failed", "placeholder"),
    "/enormous.jpg": ("failed", "too_large"),
    "/endless.jpg": ("failed", "too_large"),
    "/gzip-bomb.jpg": ("failed", "too_large"),
    "/drip.jpg": ("failed", "timeout"),
    "/slow-headers.jpg": ("failed", "timeout"),
    "/hang.jpg": ("failed", "timeout"),
}


def test_every_hostile_case_gets_its_reason_and_every_good_one_is_kept(tmp_path, host):
    urls = [host.url(p) for p in EXPECTED]
    extra = {"ftp://127.0.0.1/a.jpg": "bad_scheme", "not a url": "invalid_url", "http://[::1": "invalid_url",
             f"http://127.0.0.1:{_closed_port()}/a.jpg": "connection_error"}
    manifest, summary = fetch(tmp_path, {"a": urls + list(extra), "b": [host.url("/good2.jpg")]})
    assert list(manifest.columns) == downloader.COLUMNS
    got = {u.removeprefix(host.url("")): outcome(manifest, u) for u in urls}
    assert got == EXPECTED
    assert host.finished["/slow-headers.jpg"].wait(30)
    assert "/slow-headers.jpg" in host.cut  # cut at the deadline, not when the headers ended
    assert {u: outcome(manifest, u)[1] for u in extra} == extra
    ok = manifest[manifest["status"] == "ok"]
    for row in ok.itertuples():  # stored under its digest, 8-bit colour, dimensions as later steps read it
        image = decoded(tmp_path, row, cv2.IMREAD_UNCHANGED)
        assert row.member.rsplit(".", 1)[0] == f"{row._2}/{row.sha256}"
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert decoded(tmp_path, row).shape == (row.height, row.width, 3)
    failed = manifest[manifest["status"] == "failed"]
    assert (failed["shard"] == "").all() and (failed["reason"] != "").all()
    outcomes = manifest["status"].where(manifest["status"] == "ok", manifest["reason"])
    assert summary["outcomes"]["a"] == outcomes[manifest["class"] == "a"].value_counts().to_dict()
    assert summary["ok"] == {"a": len(ok) - 1, "b": 1}
    # Nothing else: no temp files, nothing from failed URLs.
    assert on_disk(tmp_path) == sorted({*ok["shard"], paths.IMAGE_INDEX, paths.CLASS_NAMES})
    assert len(pd.read_csv(tmp_path / paths.IMAGE_INDEX)) == len(ok)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_conversions_keep_the_picture(tmp_path, host):
    manifest, _ = fetch(tmp_path, {"a": [host.url(p) for p in ("/good.jpg", "/cmyk.jpg", "/alpha.png", "/deep.png",
                                                               "/gray.jpg", "/big.jpg", "/turned.jpg",
                                                               "/big-turned.jpg")], "b": []})
    row = {r.url.rsplit("/", 1)[1]: r for r in manifest.itertuples()}
    read = {name: decoded(tmp_path, r, cv2.IMREAD_UNCHANGED) for name, r in row.items()}
    assert stored(tmp_path, row["good.jpg"]) == BODIES["/good.jpg"]  # an RGB JPEG is stored as it came
    assert np.abs(read["cmyk.jpg"].astype(int) - (0, 0, 255)).max() < 40  # CMYK red is BGR red
    assert np.abs(read["alpha.png"][:, :30].mean((0, 1)) - (255, 0, 0)).max() < 3  # opaque blue kept (JPEG-stored)
    assert read["alpha.png"][:, 50:].min() > 240  # transparent over white
    assert read["gray.jpg"].shape[2] == 3 and read["deep.png"].dtype == np.uint8
    assert read["big.jpg"].shape[:2] == (171, 512)  # longer side shrunk to download.max_side
    # EXIF orientation: upright as later steps read them (OpenCV applies it), resized or not.
    upright = {name: decoded(tmp_path, r) for name, r in row.items()}
    assert stored(tmp_path, row["turned.jpg"]) == BODIES["/turned.jpg"]  # its tag is kept
    assert np.abs(upright["turned.jpg"].astype(int) - photo(10)).mean() < 8
    assert np.abs(upright["big-turned.jpg"].astype(int) - cv2.resize(photo(11, (300, 900)), (512, 171))).mean() < 8
    dims = manifest.set_index(manifest["url"].str.rsplit("/", n=1).str[1])[["height", "width"]]
    assert tuple(dims.loc["turned.jpg"]) == (96, 128) and tuple(dims.loc["big-turned.jpg"]) == (171, 512)


def test_retries_back_off_honour_retry_after_and_never_repeat_a_404(tmp_path, host):
    urls = [host.url(p) for p in ("/busy-once.jpg", "/down-once.jpg", "/down.jpg", "/missing.jpg", "/page.jpg",
                                  "/loop.jpg")]
    manifest, _ = fetch(tmp_path, {"a": urls, "b": []})
    attempts = dict(zip(manifest["url"].str.rsplit("/", n=1).str[1], manifest["attempts"]))
    assert attempts == {"busy-once.jpg": 2, "down-once.jpg": 2, "down.jpg": 3, "missing.jpg": 1, "page.jpg": 1,
                        "loop.jpg": 1}
    assert host.hits["/missing.jpg"] == 1 and host.hits["/page.jpg"] == 1 and host.hits["/down.jpg"] == 3
    first, second = host.times["/busy-once.jpg"]
    assert second - first >= 1.0  # the server said Retry-After: 1
    assert host.hits["/loop.jpg"] == FAST["max_redirects"] + 1


def test_duplicates_are_stored_once_and_label_conflicts_kept_in_neither(tmp_path, host):
    a = [host.url(p) for p in ("/dup-a.jpg", "/dup-b.jpg", "/shared.jpg", "/good.jpg")]
    b = [host.url("/good2.jpg"), host.url("/shared.jpg")]
    manifest, summary = fetch(tmp_path, {"a": a, "b": b})
    assert [outcome(manifest, u) for u in a] == [("ok", ""), ("skipped", "duplicate"), ("failed", "label_conflict"),
                                                 ("ok", "")]
    assert [outcome(manifest, u, "b") for u in b] == [("ok", ""), ("failed", "label_conflict")]
    shared, duplicated = (manifest.loc[manifest["url"] == u, "sha256"].iloc[0] for u in (b[1], a[0]))
    members = [name for shard in set(manifest["shard"]) - {""} for name, *_ in shards.members(tmp_path / shard)]
    assert not [m for m in members if shared in m]
    assert len([m for m in members if duplicated in m]) == 1
    assert summary["ok"] == {"a": 2, "b": 1}


def test_images_per_class_keeps_the_first_good_images_and_fetches_little_more(tmp_path, host):
    urls = [host.url(f"/photo/{i}.jpg") for i in range(40)]
    urls[1] = host.url("/missing.jpg")
    cfg = config(images_per_class=5)
    manifest, summary = fetch(tmp_path, {"a": urls, "b": urls[:3]}, cfg)
    # b lists a's first three entries: 0 and 2 are label conflicts, 1 is dead
    assert set(manifest.loc[manifest["class"] == "b", "reason"]) == {"label_conflict", "http_404"}
    kept = manifest[(manifest["class"] == "a") & (manifest["status"] == "ok")]["url"].tolist()
    assert kept == urls[3:8]
    rest = manifest[(manifest["class"] == "a") & manifest["url"].isin(urls[8:])]
    assert (rest["status"] == "skipped").all() and (rest["reason"] == "enough_images").all()
    fetched = sum(host.hits[f"/photo/{i}.jpg"] for i in range(40))
    assert fetched < 20  # windows a little past the cap, not the whole list
    assert summary is None  # b has no image left: the step fails, after writing the manifest


def test_images_the_manifest_no_longer_lists_are_pruned_from_their_shards(tmp_path, host):
    a, b = [host.url(f"/photo/{i}.jpg") for i in range(6)], [host.url(f"/photo/{i}.jpg") for i in range(6, 9)]
    first, _ = fetch(tmp_path, {"a": a, "b": b})
    # Chunks of 8 URLs run across classes: a's six images and b's first two share a shard.
    assert first["shard"].tolist() == [first["shard"][0]] * 8 + [first["shard"][8]]
    stale = tmp_path / paths.IMAGES / "old-layout" / "x.jpg"  # anything else in the folder goes too
    files.write_bytes(stale, b"x")
    # Class b replaced by c and the cap lowered: b's images go, and a keeps only its first two images.
    classes = {"a": {"wnid": "n00000001"}, "c": {"wnid": "n00000003"}}
    cfg = validate({"data": {"classes": classes, "images_per_class": 2}, "download": FAST})
    manifest, _ = fetch(tmp_path, {"a": a, "c": [host.url("/photo/9.jpg")]}, cfg)
    ok = manifest[manifest["status"] == "ok"]
    assert ok["url"].tolist() == [*a[:2], host.url("/photo/9.jpg")]
    assert on_disk(tmp_path) == sorted({*ok["shard"], paths.IMAGE_INDEX, paths.CLASS_NAMES})
    held = sorted(name for shard in set(ok["shard"]) for name, *_ in shards.members(tmp_path / shard))
    assert held == sorted(ok["member"])  # rewritten shards hold exactly the kept images...
    for row in ok.itertuples():  # ...at the offsets the manifest gives
        assert decoded(tmp_path, row).shape[:2] == (row.height, row.width)
    hits = sum(host.hits.values())
    again, _ = fetch(tmp_path, {"a": a, "c": [host.url("/photo/9.jpg")]}, cfg)  # nothing kept is fetched again
    kept = [host.url(f"/photo/{i}.jpg") for i in (0, 1, 9)]
    assert sum(host.hits.values()) - hits == len(set(again.loc[again["status"] != "ok", "url"]) - set(kept))
    assert again[["url", "shard", "member", "offset"]].equals(manifest[["url", "shard", "member", "offset"]])


def test_one_host_gets_at_most_per_host_connections_and_queued_urls_do_not_time_out(tmp_path, host):
    host.slow_s = 0.2
    urls = [host.url(f"/slow/{i}.jpg") for i in range(8)]
    # Eight URLs through two connections take four times the delay, twice the deadline.
    manifest, _ = fetch(tmp_path, {"a": urls[:4], "b": urls[4:]}, config({"per_host": 2, "timeout_s": 0.5}))
    assert (manifest["status"] == "ok").all()
    assert host.most_in_flight == 2


def test_a_class_with_too_few_images_fails_the_step_with_a_clear_message(tmp_path, host):
    write_lists(tmp_path, {"a": [host.url("/good.jpg")], "b": [host.url("/missing.jpg")]})
    with pytest.raises(StepError, match=r"too few good images: \{'b': 0\}"):
        download.run(config(), tmp_path)
    assert (tmp_path / paths.MANIFEST).is_file()  # the reasons are still written


def test_objects_alive_before_the_step_are_left_out_of_collections_until_it_ends(tmp_path, host, monkeypatch):
    frozen_while_storing = []
    store = downloader.Downloader.store
    monkeypatch.setattr(downloader.Downloader, "store",
                        lambda self, *args: frozen_while_storing.append(gc.get_freeze_count()) or store(self, *args))
    before = gc.get_freeze_count()
    write_lists(tmp_path, {"a": [host.url("/good.jpg")], "b": [host.url("/missing.jpg")]})
    with pytest.raises(StepError):  # b ends short: the objects are released on the way out all the same
        download.run(config(), tmp_path)
    assert len(frozen_while_storing) == 2 and min(frozen_while_storing) > before + 10_000
    assert gc.get_freeze_count() == before


def test_an_error_while_storing_reaches_the_chunk_and_the_validation_threads_live_on(tmp_path, host):
    client = downloader.Downloader(config(), tmp_path)
    try:
        def full_disk():
            raise OSError("No space left on device")

        with pytest.raises(OSError, match="No space left"):
            client.rows([("a", host.url("/good.jpg")), ("a", host.url("/good2.jpg"))], on_url=full_disk)
        assert [r.status for r in client.rows([("a", host.url("/good.jpg"))])] == ["ok"]
    finally:
        client.close()


def test_rerun_skips_urls_already_ok_and_retries_failed_ones(tmp_path, host):
    lists = {"a": [host.url("/good.jpg"), host.url("/missing.jpg")], "b": [host.url("/good2.jpg")]}
    first, _ = fetch(tmp_path, lists)
    second, _ = fetch(tmp_path, lists)
    assert host.hits["/good.jpg"] == 1 and host.hits["/good2.jpg"] == 1 and host.hits["/missing.jpg"] == 2
    assert second.drop(columns="elapsed_s").equals(first.drop(columns="elapsed_s"))
    # A setting that changes what is stored re-validates everything.
    fetch(tmp_path, lists, config({"max_side": 64}))
    assert host.hits["/good.jpg"] == 2


def fetcher(**limits) -> web.Fetcher:
    return web.Fetcher(web.Limits(**{"allowed_hosts": frozenset({"127.0.0.1"}), **limits}))


def test_a_body_streamed_to_a_file_starts_again_on_a_retry(host):
    with io.BytesIO() as sink, fetcher(retries=1, backoff_s=0) as client:
        got = client.get(host.url("/cut-once.jpg"), sink=sink)
        assert got.ok and got.attempts == 2 and sink.getvalue() == BODIES["/good.jpg"]


def test_spaces_controls_and_non_ascii_in_urls_are_escaped_as_browsers_do(host):
    with fetcher(retries=0) as client:
        got = [client.get(host.url(path)) for path in ("/gööd.jpg", "/good .jpg", "/good\x00.jpg")]
    assert [g.reason for g in got] == ["http_404"] * 3
    assert host.hits["/g%C3%B6%C3%B6d.jpg"] == host.hits["/good%20.jpg"] == host.hits["/good%00.jpg"] == 1


def test_one_thread_keeps_in_flight_transfers_going_over_all_hosts(host):
    host.slow_s = 0.3
    hosts = ["127.0.0.1", "localhost"] * 32  # two host names, one server
    urls = [host.url(f"/slow/{i}.jpg", name) for i, name in enumerate(hosts)]
    threads = threading.active_count()
    with fetcher(in_flight=48, per_host=32, allowed_hosts=frozenset(hosts)) as client:
        assert threading.active_count() == threads + 1
        got = [future.result() for future in [client.submit(url) for url in urls]]
    assert all(g.ok for g in got)
    assert host.most_in_flight == 48  # at once, and never more, over both host names


def test_urls_submitted_from_many_threads_at_once_are_all_fetched(host):
    """Only a submit that finds the fetch thread's inbox empty wakes it, and a fetch thread
    with nothing to do sleeps until woken: no URL may be left waiting in its inbox."""
    together = threading.Barrier(8)
    with fetcher(in_flight=4, per_host=4) as client:
        def rounds(_) -> bool:  # each round, eight threads wake a fetch thread that has run dry
            ok = True
            for _ in range(20):
                together.wait(timeout=10)
                ok &= client.submit(host.url("/good.jpg")).result(timeout=5).ok
            return ok

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(rounds, range(8)))
    assert host.hits["/good.jpg"] == 160


def test_closing_a_fetcher_ends_its_unfinished_fetches_instead_of_leaving_them_waiting(host):
    client = fetcher()
    pending = client.submit(host.url("/hang.jpg"))
    deadline = time.monotonic() + 10
    while not host.hits["/hang.jpg"] and time.monotonic() < deadline:
        time.sleep(0.01)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        pending.result(timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        client.submit(host.url("/good.jpg"))


def test_the_fetcher_works_in_a_process_that_loaded_tensorflow_first(host):
    """TensorFlow brings a libcurl of its own into the process (the flow imports it before
    downloading); the fetcher must still load, and use the libcurl pycurl ships with."""
    code = ("import sys, tensorflow\n"
            "from tasks.acquire import web\n"
            "with web.Fetcher(web.Limits(allowed_hosts=frozenset({'127.0.0.1'}))) as client:\n"
            "    print('fetched', client.get(sys.argv[1]).ok)\n")
    done = subprocess.run([sys.executable, "-c", code, host.url("/good.jpg")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fetched True" in done.stdout


@pytest.fixture
def tls_host(tmp_path):
    """An HTTPS image host on 127.0.0.1 whose certificate no authority signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = HostileServer()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with server:
        yield server


def test_certificates_are_verified(tls_host):
    with fetcher(retries=0, timeout_s=5) as client:
        got = client.get(tls_host.url("/good.jpg").replace("http:", "https:"))
    assert got.reason == "tls_error" and tls_host.hits["/good.jpg"] == 0


# --- where a URL may go -----------------------------------------------------------------


@pytest.mark.parametrize("address, refused", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True),
    ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True), ("224.0.0.1", True), ("240.0.0.1", True),
    ("::1", True), ("fe80::1", True), ("fc00::1", True), ("::ffff:127.0.0.1", True), ("ff02::1", True),
    ("93.184.216.34", False), ("2606:2800:220:1::1", False),
])
def test_address_rules(address, refused):
    assert web.refused_address(address) is refused


def test_forbidden_destinations_are_refused_after_resolution_and_on_every_hop(tmp_path, host):
    port = host.port
    lists = {"a": [f"http://127.0.0.2:{port}/good.jpg", f"http://[::1]:{port}/good.jpg",
                   host.url("/to-forbidden.jpg"), host.url("/good.jpg", host="localhost")], "b": []}
    manifest, _ = fetch(tmp_path, lists)
    assert manifest["reason"].tolist() == ["blocked_host"] * 4  # localhost resolves to loopback: refused too
    assert host.hits["/good.jpg"] == 0  # nothing reached the server's image
    allowed = config({"allowed_hosts": ["127.0.0.1", "localhost"]})
    manifest, _ = fetch(tmp_path / "allowed", {"a": lists["a"][3:], "b": []}, allowed)
    assert manifest["status"].tolist() == ["ok"]


def test_the_address_rules_judge_each_socket_libcurl_opens(monkeypatch, host):
    """No lookup of our own: each address is judged as a connection to it is opened, so what
    was checked is what is dialled, whatever a second DNS answer (rebinding) would say."""
    judged = []
    judge = web._Transfer.open_socket

    def spy(self, purpose, address):
        judged.append(address.addr[0])
        return judge(self, purpose, address)

    monkeypatch.setattr(web._Transfer, "open_socket", spy)
    with fetcher(retries=0, timeout_s=2, allowed_hosts=frozenset()) as client:
        got = client.get(host.url("/good.jpg", host="localhost"))
    assert got.reason == "blocked_host" and host.hits["/good.jpg"] == 0
    assert judged and set(judged) <= {"127.0.0.1", "::1"}  # every address localhost has, each refused


def test_local_files_are_read_only_from_configured_folders(tmp_path):
    inside = tmp_path / "photos" / "n00000001"  # data.folder / the class's wnid
    inside.mkdir(parents=True)
    image = cv2.imencode(".png", np.full((40, 40, 3), 90, np.uint8))[1].tobytes()
    (inside / "x.png").write_bytes(image)
    (tmp_path / "secret.png").write_bytes(image)
    cfg = config(source="folder", folder="photos")
    manifest, _ = fetch(tmp_path, {"a": ["file:photos/n00000001/x.png",
                                         "file:photos/n00000001/../../secret.png", (tmp_path / "secret.png").as_uri(),
                                         "file:photos/n00000001/none.png"], "b": []}, cfg)
    assert list(zip(manifest["status"], manifest["reason"])) == [
        ("ok", ""), ("failed", "blocked_path"), ("failed", "blocked_path"), ("failed", "missing_file")]
