"""Each step on tiny data, as plain functions over files (no Prefect, no DVC)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run, tiny_params
from tasks import augment, download, evaluate, fetch_urls, paths, split, train
from tasks.acquire import downloader, images, mirror, sources
from tasks.params import validate
from tasks.step import StepError
from tasks.storage import canonical, shards

SUMMARIES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def source():
    with mirror.Mirror() as m:
        yield m


@pytest.fixture(scope="module")
def cfg(source):
    return validate(tiny_params(source.server.server_address[1]))


@pytest.fixture(scope="module")
def work(tmp_path_factory, cfg):
    """A working directory the steps have run through, in order."""
    workdir = tmp_path_factory.mktemp("work")
    for step in (fetch_urls, download, split, augment, train, evaluate):
        SUMMARIES[step.STEP.name] = step.run(cfg, workdir)
    return workdir


def manifest(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / paths.MANIFEST, keep_default_na=False)


def test_fetch_urls_writes_one_list_per_class(work, source):
    for cls, spec in (("bikes", "n02834778"), ("ships", "n04194289")):
        urls = (work / paths.URLS / f"{cls}.txt").read_text().splitlines()
        assert urls == mirror.url_list(source.base_url, spec)


def test_url_list_parser_reads_text_and_html_and_keeps_every_line():
    body = b"http://a/1.jpg\r\nftp://a/2.jpg\r\n\r\nhttps://a/3.png\r\nhttp://a/1.jpg\r\njavascript:x\r\n"
    assert sources.parse_url_list(body) == ["http://a/1.jpg", "ftp://a/2.jpg", "https://a/3.png", "javascript:x"]
    assert sources.parse_url_list(b"<html><body>http://a/1.jpg<br>\nhttp://b/2.jpg</body></html>") == [
        "http://a/1.jpg", "http://b/2.jpg"]


def test_fetch_urls_fails_clearly_when_the_source_is_down(tmp_path, port):
    cfg = validate(tiny_params(port, data={"embedded_mirror": False}))
    with pytest.raises(StepError, match="could not fetch the URL list"):
        fetch_urls.run(cfg, tmp_path)
    assert not (tmp_path / paths.URLS).exists()


def test_download_keeps_valid_images_in_shards_with_an_index(work, cfg):
    rows = manifest(work)
    assert list(rows.columns) == downloader.COLUMNS
    ok = rows[rows["status"] == "ok"]
    assert ok.groupby("class").size().to_dict() == {"bikes": 24, "ships": 24}
    index = pd.read_csv(work / paths.IMAGE_INDEX, keep_default_na=False)
    assert list(index.columns) == ["sha256", "class", "source_subset", "shard", "member", "offset", "size", "width",
                                   "height", "url"]
    assert sorted(index["sha256"]) == sorted(ok["sha256"])
    with shards.Reader() as reader:
        for row in index.itertuples():
            assert row.member.rsplit(".", 1)[0] == f"{row._2}/{row.sha256}"
            image = cv2.imdecode(np.frombuffer(reader.read(work / row.shard, row.offset, row.size), np.uint8),
                                 cv2.IMREAD_COLOR)
            assert image is not None and image.shape[:2] == (row.height, row.width)
    for shard in set(index["shard"]):  # a plain tar that holds exactly the indexed images
        with tarfile.open(work / shard) as tar:
            assert sorted(tar.getnames()) == sorted(index.loc[index["shard"] == shard, "member"])
    stored = sorted(p.relative_to(work).as_posix() for p in (work / paths.IMAGES).rglob("*") if p.is_file())
    assert stored == sorted({*index["shard"], paths.IMAGE_INDEX, paths.CLASS_NAMES})  # nothing else, no temp files


def test_download_gives_every_bad_url_a_reason(work):
    rows = manifest(work)
    needed = rows[rows["reason"] != "enough_images"]  # URLs past what the class needed are never fetched
    kinds = needed["url"].str.extract(r"/(dead|html|truncated|placeholder|duplicate)-\d+\.jpg$")[0]
    reasons = {"dead": "http_404", "html": "not_image", "truncated": "truncated", "placeholder": "placeholder",
               "duplicate": "duplicate"}
    bad = needed[kinds.notna()]
    assert bad["reason"].tolist() == kinds.dropna().map(reasons).tolist() and bad["reason"].nunique() >= 3
    assert bad["status"].tolist() == ["skipped" if r == "duplicate" else "failed" for r in bad["reason"]]
    good = needed[kinds.isna()]
    assert good["url"].str.fullmatch(r".*/\d+\.(jpg|png)").all() and (good["status"] == "ok").all()
    assert (good["reason"] == "").all() and (good["shard"] != "").all()
    assert (bad["shard"] == "").all()


def test_download_validates_by_decoding_not_by_content_type(cfg):
    def reason(data: bytes) -> str:
        return images.check(data, cfg.download.min_side, cfg.download.max_pixels).reason

    good = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    assert reason(good) == ""
    assert reason(b"<html>not an image</html>") == "not_image"
    assert reason(good[: len(good) // 2]) == "truncated"
    assert reason(good[:2] + b"\0" * 100 + good[-2:]) == "corrupt"
    assert reason(b"") == "empty"
    assert reason(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()) == "too_small"


def test_download_fails_clearly_when_a_class_has_too_few_images(tmp_path, cfg, source):
    (tmp_path / paths.URLS).mkdir(parents=True)
    for cls in cfg.data.classes:
        (tmp_path / paths.URLS / f"{cls}.txt").write_text(
            f"{source.base_url}/img/n02834778/dead-1.jpg\nnot a url\nftp://127.0.0.1/a.jpg\nhttp://[::1\n")
    with pytest.raises(StepError, match="too few good images"):
        download.run(cfg, tmp_path)
    reasons = manifest(tmp_path)["reason"].tolist()
    assert reasons == ["http_404", "invalid_url", "bad_scheme", "invalid_url"] * 2


def test_download_rerun_reuses_stored_images(work, cfg, tmp_path, source, port):
    """A rerun fetches nothing it already has: with the source gone, good rows stay good."""
    copy = tmp_path / "copy"
    shutil.copytree(work / "data", copy / "data")
    shutil.copytree(work / downloader.RECORDS_DIR, copy / downloader.RECORDS_DIR)
    # Point every URL (lists and the records of finished chunks) at a port where nothing answers.
    for path in [*(copy / paths.URLS).glob("*.txt"), *(copy / downloader.RECORDS_DIR).rglob("*.csv")]:
        path.write_text(path.read_text().replace(source.base_url, f"http://127.0.0.1:{port}"))
    offline = cfg.model_copy(update={"download": cfg.download.model_copy(update={"retries": 0, "timeout_s": 1})})
    download.run(offline, copy)
    before, after = manifest(work), manifest(copy)
    where = ["shard", "member", "offset", "size"]
    assert after[after.status == "ok"][where].values.tolist() == before[before.status == "ok"][where].values.tolist()


def drawn_subset(sha256: str, fraction: float, seed: int) -> str:
    """The split's rule, computed here on its own: the first 8 bytes of SHA-256("<seed>:<digest>") as a
    fraction of 2**64, validation below `fraction`."""
    draw = int(hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()[:16], 16) / 2**64
    return "validation" if draw < fraction else "train"


def test_split_is_deterministic_stratified_and_disjoint(work, cfg):
    table = pd.read_csv(work / paths.SPLIT)
    assert set(table["subset"]) == {"train", "validation"}
    assert table.groupby("class")["subset"].nunique().eq(2).all()
    assert not set(table.loc[table.subset == "train", "sha256"]) & set(table.loc[table.subset == "validation", "sha256"])
    fraction, seed = cfg.split.validation_fraction, cfg.base.seed
    assert table["subset"].tolist() == [drawn_subset(d, fraction, seed) for d in table["sha256"]]
    index = pd.read_csv(work / paths.IMAGE_INDEX)
    assert table[["sha256", "shard", "offset", "size"]].values.tolist() == \
        index[["sha256", "shard", "offset", "size"]].values.tolist()


def test_another_seed_draws_another_split(work, cfg, tmp_path):
    shutil.copytree(work / paths.IMAGES, tmp_path / paths.IMAGES)
    other = cfg.model_copy(update={"base": cfg.base.model_copy(update={"seed": cfg.base.seed + 1})})
    split.run(other, tmp_path)
    before, after = pd.read_csv(work / paths.SPLIT), pd.read_csv(tmp_path / paths.SPLIT)
    assert after["sha256"].tolist() == before["sha256"].tolist()
    assert after["subset"].tolist() == [drawn_subset(d, cfg.split.validation_fraction, cfg.base.seed + 1)
                                        for d in after["sha256"]]
    moved = (after["subset"] != before["subset"]).sum()
    assert moved >= len(before) // 10, moved  # about 2 f (1 - f) of the images move: 18 of 48 here


def test_augment_writes_canonical_images_as_shards_stats_and_preview(work, cfg):
    index = pd.read_csv(work / paths.AUGMENT_INDEX)
    table = pd.read_csv(work / paths.SPLIT)
    assert sorted(index["sha256"]) == sorted(table["sha256"])
    assert dict(zip(index["sha256"], index["subset"])) == dict(zip(table["sha256"], table["subset"]))
    assert sorted(set(index["shard"])) == [f"{paths.AUGMENTED}/train-00000-of-00001.tar",
                                           f"{paths.AUGMENTED}/validation-00000-of-00001.tar"]
    with shards.Reader() as reader:
        for row in index.itertuples():
            data = np.frombuffer(reader.read(work / row.shard, row.offset, row.size), np.uint8)
            assert cv2.imdecode(data, cv2.IMREAD_COLOR).shape == (cfg.augment.image_size, cfg.augment.image_size, 3)
    for shard, rows in index.groupby("shard"):  # each shard in digest order, so classes are mixed
        assert rows["sha256"].tolist() == sorted(rows["sha256"]) and rows["offset"].is_monotonic_increasing
    stats = json.loads((work / paths.STATS).read_text())
    assert stats["classes"] == ["bikes", "ships"]
    # Each image's label is its class's place in the class list the model card gives the trained model.
    card = json.loads((work / paths.MODEL_CARD).read_text())
    assert card["classes"] == stats["classes"]
    assert index["label"].tolist() == [card["classes"].index(c) for c in index["class"]]
    vec = np.array(stats["pca_eigvec"])
    assert np.allclose(vec.T @ vec, np.eye(3), atol=1e-6) and stats["pca_eigval"] == sorted(stats["pca_eigval"], reverse=True)
    assert all(0 < m < 255 for m in stats["mean"]) and all(s > 10 for s in stats["std"])
    assert (work / paths.AUGMENT_PLOT).read_bytes()[:4] == b"\x89PNG"


def test_canonical_resizes_shorter_side_and_centre_crops():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 90:110] = 255  # a bar in the centre survives the crop
    square = canonical.canonical(image, 50)
    assert square.shape == (50, 50, 3) and square[:, 20:30].mean() > 200 and square[:, :5].mean() == 0


def test_train_writes_history_logs_and_model_card(work):
    history = pd.read_csv(work / paths.HISTORY)
    assert history["epoch"].tolist() == [1, 2] and {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history.columns)
    assert list((work / paths.LOGS).rglob("events.out.tfevents.*"))
    card = json.loads((work / paths.MODEL_CARD).read_text())
    assert card["classes"] == ["bikes", "ships"] and card["input_size"] == 67 and card["image_size"] == 76
    assert card["params"]["train"]["epochs"] == 2


def test_saved_model_reloads_to_identical_predictions(tmp_path, cfg, caplog):
    import keras

    net = train.compile_model(train.build_model(cfg, ["a", "b"], {"mean": [120.0] * 3, "std": [60.0] * 3}), cfg, 1)
    x = np.random.default_rng(0).uniform(0, 255, (8, 67, 67, 3)).astype("float32")
    net.fit(x, np.array([0, 1] * 4), epochs=1, verbose=0)
    with caplog.at_level("WARNING"):
        train.save_model(net, tmp_path / "model.h5")
    assert not [r for r in caplog.records if "HDF5" in r.getMessage()]  # .h5 is the format asked for: no notice
    assert [p.name for p in tmp_path.iterdir()] == ["model.h5"]
    loaded = keras.models.load_model(tmp_path / "model.h5")
    np.testing.assert_array_equal(net.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [type(layer).__name__ for layer in loaded.layers].count("LocalResponseNorm") == 2


def test_evaluate_writes_metrics_confusion_and_plots(work):
    result = json.loads((work / paths.EVAL).read_text())
    confusion = pd.read_csv(work / paths.CONFUSION)
    validation = pd.read_csv(work / paths.SPLIT).query("subset == 'validation'")
    assert result["images"] == len(confusion) == len(validation)
    assert result["accuracy"] == pytest.approx((confusion.actual == confusion.predicted).mean(), abs=1e-4)
    per_class = pd.read_csv(work / paths.CLASS_SCORES)
    assert sorted(per_class["class"]) == ["bikes", "ships"] and per_class["support"].sum() == result["images"]
    assert result["top5_error"] == "n/a: 5 or fewer classes" and result["classes"] == 2
    for plot in (paths.CONFUSION_PLOT, paths.PREDICTIONS_PLOT):
        assert (work / plot).read_bytes()[:4] == b"\x89PNG"
    assert SUMMARIES["evaluate"]["accuracy"] == result["accuracy"]
    assert json.loads((work / paths.EVAL_CARD).read_text())["evaluation"]["accuracy"] == result["accuracy"]


def test_scores_per_class():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    result = evaluate.scores(np.array([0, 0, 1, 1]), probabilities, ["a", "b"])
    assert result["accuracy"] == 0.75 and result["confusion"].tolist() == [[1, 1], [0, 2]]
    per_class = result["per_class"].set_index("class")
    assert per_class.loc["a"].to_dict() == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert per_class.loc["b", "precision"] == pytest.approx(0.6667, abs=1e-4)
    assert result["top1_error"] == 0.25 and result["top5_error"] == "n/a: 5 or fewer classes"


def test_cli_images_lists_and_extracts_stored_images(work):
    index = pd.read_csv(work / paths.IMAGE_INDEX)
    ships = index[index["class"] == "ships"]
    listed = run(["alexnet", "images", "--class", "ships", "--limit", "3"], work).stdout.splitlines()
    assert len(listed) == 4 and listed[-1].startswith(f"{len(ships)} images match")
    run(["alexnet", "images", "--class", "ships", "--out", "picked"], work)
    written = sorted(p.relative_to(work / "picked").as_posix() for p in (work / "picked").rglob("*") if p.is_file())
    assert written == sorted(ships["member"])
    one = index.iloc[-1]
    run(["alexnet", "images", "--digest", one["sha256"][:12], "--out", "one"], work)
    assert cv2.imread(str(work / "one" / one["member"])).shape[:2] == (one["height"], one["width"])
    validation = (pd.read_csv(work / paths.SPLIT)["subset"] == "validation").sum()
    extracted = run(["alexnet", "images", "--canonical", "--subset", "validation", "--out", "val"], work).stdout
    assert extracted.startswith(f"{validation} images written")
    downloaded = run(["alexnet", "images", "--subset", "validation", "--out", "val-downloaded/"], work).stdout
    assert downloaded == f"{validation} images written under val-downloaded/ (<class>/<sha256>.<ext>)\n"
    assert sorted(p.stem for p in (work / "val-downloaded").rglob("*.*")) == \
        sorted(p.stem for p in (work / "val").rglob("*.*"))  # the same images, as downloaded and canonical
    nothing = run(["alexnet", "images", "--digest", "ffffffffffff"], work, check=False)
    assert nothing.returncode == 1 and nothing.stdout.strip() == "0 images match"
    unknown = run(["alexnet", "images", "--class", "unknown"], work, check=False)
    assert unknown.returncode == 1 and unknown.stderr.startswith("alexnet images: no class named unknown: ")


def test_cli_predict_prints_a_table_per_image_and_an_error_per_bad_file(work):
    run(["alexnet", "images", "--class", "ships", "--limit", "1", "--out", "predict"], work)
    image = next((work / "predict" / "ships").iterdir())
    (work / "notes.txt").write_text("not an image")
    done = run(["alexnet", "predict", str(image), "missing.jpg", "notes.txt", "--top", "2"], work)
    lines = done.stdout.splitlines()
    assert lines[0] == str(image) and lines[1].split() == ["rank", "class", "probability"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2"] and {r[1] for r in rows} == {"bikes", "ships"}
    probabilities = [float(r[2].rstrip("%")) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(100, abs=0.2)
    assert "missing.jpg: error: no such file" in done.stderr
    assert "notes.txt: error: not an image OpenCV can read" in done.stderr
    ten = run(["alexnet", "predict", str(image), "--ten-crop"], work)
    assert ten.stdout.splitlines()[0] == str(image) and len(ten.stdout.splitlines()) == 3
    failed = run(["alexnet", "predict", "missing.jpg", "notes.txt"], work, check=False)
    assert failed.returncode == 1 and failed.stdout == ""
    no_model = run(["alexnet", "predict", str(image), "--model", "nowhere.h5"], work, check=False)
    assert no_model.returncode == 1 and "nowhere.h5" in no_model.stderr and "Traceback" not in no_model.stderr


def test_cli_model_prints_the_summary():
    paper = run(["alexnet", "model", "--variant", "paper", "--classes", "1000"], REPO).stdout
    assert "60,965,224" in paper and "LocalResponseNorm" in paper
    seed = run(["alexnet", "model", "--variant", "seed", "--classes", "2"], REPO).stdout
    assert "62,380,346" in seed
