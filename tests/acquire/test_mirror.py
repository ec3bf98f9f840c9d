"""The embedded demo source: ImageNet's URL-list format, real images, real bad entries."""

from __future__ import annotations

import cv2
import numpy as np
import requests

from conftest import endpoint
from tasks.acquire import demo_images, images, mirror
from tasks.config import Data


def test_url_list_is_crlf_lines_of_urls_with_bad_entries():
    with mirror.Mirror() as m:
        body = requests.get(m.endpoint().format(wnid="n04194289"), timeout=10).content
        assert body.endswith(b"\r\n") and b"\n" not in body.replace(b"\r\n", b"")
        urls = body.decode().split("\r\n")[:-1]
        assert len(urls) > mirror.IMAGES_PER_SYNSET
        assert all(u.startswith(m.base_url + "/img/n04194289/") for u in urls)
        assert {u.rsplit("/", 1)[1].split("-")[0] for u in urls if "-" in u.rsplit("/", 1)[1]} == set(mirror.BAD_KINDS)
        assert requests.get(m.endpoint().format(wnid="n00000000"), timeout=10).status_code == 404


def test_good_urls_serve_decodable_deterministic_images_and_bad_ones_do_not():
    with mirror.Mirror() as m:
        base = f"{m.base_url}/img/n02834778"
        first, again = (requests.get(f"{base}/5.jpg", timeout=10).content for _ in range(2))
        assert first == again
        image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and min(image.shape[:2]) >= 160
        assert requests.get(f"{base}/dead-7.jpg", timeout=10).status_code == 404
        html = requests.get(f"{base}/html-15.jpg", timeout=10)
        assert html.status_code == 200 and html.content.startswith(b"<html")
        truncated = requests.get(f"{base}/truncated-23.jpg", timeout=10).content
        assert len(truncated) < len(requests.get(f"{base}/23.jpg", timeout=10).content)
        placeholder = requests.get(f"{base}/placeholder-31.jpg", timeout=10).content
        assert images.check(placeholder, 32, 10**8).reason == "placeholder"
        assert requests.get(f"{base}/duplicate-39.jpg", timeout=10).content == requests.get(
            f"{base}/39.jpg", timeout=10).content


def test_classes_differ_in_shape_not_in_colour_or_background():
    """A colour-statistics classifier must stay near chance: the task needs the object's shape."""
    feats = {
        kind: np.array([np.concatenate([img.mean((0, 1)), img.std((0, 1))])
                        for img in (demo_images.render(kind, i) for i in range(60))])
        for kind in demo_images.KINDS
    }
    train = {k: v[:40] for k, v in feats.items()}
    centroids = {k: v.mean(0) for k, v in train.items()}
    scale = np.concatenate(list(train.values())).std(0)
    hits = [
        min(centroids, key=lambda c: np.linalg.norm((x - centroids[c]) / scale)) == kind
        for kind, v in feats.items() for x in v[40:]
    ]
    assert np.mean(hits) < 0.75
    # ...and no two images are alike.
    sizes = {demo_images.render("ship", i).shape for i in range(10)}
    assert len(sizes) > 5


def test_mirror_starts_only_when_nothing_answers(port):
    data = Data(url_list_endpoint=endpoint(port))
    assert not mirror.answering("127.0.0.1", port)
    with mirror.serving_if_needed(data):
        assert requests.get(data.url_list_endpoint.format(wnid="n02834778"), timeout=10).ok
    assert not mirror.answering("127.0.0.1", port)
    with mirror.Mirror("127.0.0.1", port) as running, mirror.serving_if_needed(data):
        assert running.thread.is_alive()  # reused, not started twice (which would fail to bind)


def test_mirror_is_not_started_when_switched_off_or_not_loopback(port):
    for data in (Data(url_list_endpoint=endpoint(port), embedded_mirror=False),
                 Data(url_list_endpoint="http://example.invalid:9/list?wnid={wnid}")):
        with mirror.serving_if_needed(data):
            assert not mirror.answering("127.0.0.1", port)
