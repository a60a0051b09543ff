"""Data sets as plugins and as paths (issue 14): the registry, the built-ins, the three
layouts of a path, and the checks every data set goes through before it is used."""

from __future__ import annotations

import gzip
import hashlib
import warnings
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import fake_images, write_fake_mnist
from dataset_files import CLASSES, write_idx_folder, write_image_folder, write_npz

from aetool import data
from aetool.data import check_unchanged, idx_bytes, load_dataset, resolve_dataset
from aetool.data.files import DataWarning
from aetool.data.registry import Dataset, DatasetArrays, describe_datasets, registered_datasets
from aetool.errors import DataError, DataSettingError
from aetool.plugins import PluginWarning

BUILT_INS = ["mnist", "fashion-mnist", "kmnist", "emnist", "emnist-letters"]


def test_the_built_ins_are_plugins_like_any_other():
    found = registered_datasets()
    assert list(found)[: len(BUILT_INS)] == BUILT_INS
    assert found["mnist"].plugin == "aetool.plugins.default.mnist"
    assert found["kmnist"].classes[:3] == ("o", "ki", "su")
    assert len(found["emnist"].classes) == 47 and found["emnist-letters"].classes[1] == "a"


def test_mnist_s_checksum_is_what_it_was(fake_data_dir):
    """The sha256 of MNIST is computed as before data sets were plugins, so the runs trained
    before still match their data."""
    loaded = load_dataset("mnist", fake_data_dir)
    old = hashlib.sha256()
    for t in (loaded.train_images, loaded.train_labels, loaded.test_images, loaded.test_labels):
        old.update(t.numpy().tobytes())
    assert loaded.checksum == old.hexdigest()
    assert loaded.train_labels.dtype == torch.int64 and loaded.classes[0] == "0"


def tiny_arrays(root, progress=None) -> DatasetArrays:
    train, train_labels = fake_images(60, 1)
    test, test_labels = fake_images(20, 2)
    return DatasetArrays(train[:, 0].numpy(), test[:, 0].numpy(), train_labels.numpy(),
                         test_labels.numpy())


def test_a_plugin_registers_a_data_set_that_loads_like_mnist(plugin, tmp_path):
    def register_datasets(register):
        register(Dataset("tiny", "Sixty fake digits.", tiny_arrays, classes=tuple("0123456789"),
                         present=lambda root: True))

    plugin("tiny-plugin", register_datasets=register_datasets)
    loaded = load_dataset("tiny", tmp_path)
    assert loaded.train_images.shape == (60, 1, 28, 28) and loaded.train_images.dtype == torch.uint8
    assert loaded.test_labels.shape == (20,) and loaded.name == "tiny"
    row = next(r for r in describe_datasets(tmp_path) if r["name"] == "tiny")
    assert row["plugin"] == "tiny-plugin" and row["present"] is True


def test_a_taken_name_or_a_broken_plugin_warns_and_the_rest_works(plugin):
    def steal(register):
        register(Dataset("mnist", "Not MNIST.", tiny_arrays))
        register(Dataset("bad/name", "A path is not a name.", tiny_arrays))
        register("not a data set")

    def broken(register):
        raise RuntimeError("boom")

    plugin("thief", register_datasets=steal)
    plugin("broken", register_datasets=broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = registered_datasets()
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert any("broken failed in register_datasets" in m and "boom" in m for m in messages)
    assert any("'bad/name'" in m for m in messages) and any("not an" in m for m in messages)
    assert found["aetool/mnist"].plugin == "aetool.plugins.default.mnist" and "kmnist" in found
    assert found["thief/mnist"].plugin == "thief"
    with pytest.raises(DataSettingError, match="both aetool and thief; write 'aetool/mnist' "
                                               "or 'thief/mnist'"):
        load_dataset("mnist", ".")


def test_a_qualified_data_set_name_loads_and_a_clash_is_exit_2(plugin, tmp_path, fake_data_dir,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    plugin("tiny-a", register_datasets=lambda register: register(
        Dataset("tiny", "Sixty fake digits.", tiny_arrays, classes=tuple("0123456789"))))
    plugin("tiny-b", register_datasets=lambda register: register(
        Dataset("tiny", "The same, from elsewhere.", tiny_arrays, classes=tuple("0123456789"))))
    loaded = load_dataset("tiny-b/tiny", tmp_path)
    assert loaded.train_images.shape == (60, 1, 28, 28)
    assert load_dataset("aetool/mnist", fake_data_dir).train_images.shape[0] == 600
    from typer.testing import CliRunner

    from aetool.cli import app

    result = CliRunner().invoke(app, ["fit", "--dataset", "tiny", "--max-epochs", "1"])
    assert result.exit_code == 2 and "'tiny-a/tiny' or 'tiny-b/tiny'" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_plugin_that_returns_bad_arrays_gets_one_sentence(plugin, tmp_path):
    def register_datasets(register):
        register(Dataset("floaty", "Floats.", lambda root, progress=None: DatasetArrays(
            np.zeros((5, 28, 28), np.float32), np.zeros((5, 28, 28), np.float32))))
        register(Dataset("crashy", "Crashes.", lambda root, progress=None: 1 / 0))

    plugin("odd", register_datasets=register_datasets)
    with pytest.raises(DataError, match=r"'floaty' \(plugin odd\): the train images are "
                                        "torch.float32, expected uint8"):
        load_dataset("floaty", tmp_path)
    with pytest.raises(DataError, match="'crashy' .* failed to load: ZeroDivisionError"):
        load_dataset("crashy", tmp_path)


# --------------------------------------------------------------------------- KMNIST, EMNIST


def test_kmnist_reads_torchvision_s_layout_with_mnist_s_checks(tmp_path):
    write_fake_mnist(tmp_path, 120, 40, folder="KMNIST")
    loaded = load_dataset("kmnist", tmp_path)
    assert loaded.classes[1] == "ki" and loaded.train_images.shape == (120, 1, 28, 28)
    raw = tmp_path / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:-3])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte has .* bytes but its header"):
        load_dataset("kmnist", tmp_path)


def test_emnist_images_are_turned_upright(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = fake_images(50, 1)
    for split in ("train", "test"):
        (raw / f"emnist-balanced-{split}-images-idx3-ubyte").write_bytes(
            idx_bytes(images.transpose(2, 3), "images"))
        (raw / f"emnist-balanced-{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(labels + 30, "labels")))
    loaded = load_dataset("emnist", tmp_path)
    assert torch.equal(loaded.train_images, images)
    assert loaded.classes[int(loaded.train_labels[0])] == registered_datasets()["emnist"].classes[
        int(labels[0]) + 30]


@pytest.mark.parametrize("name, folder", [("kmnist", "KMNIST"), ("emnist", "EMNIST"),
                                          ("emnist-letters", "EMNIST")])
def test_a_failed_download_says_where_to_put_the_files(name, folder, tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv

    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise URLError("no network")

    monkeypatch.setattr(tv, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as caught:
        load_dataset(name, tmp_path)
    message = str(caught.value)
    assert calls and all(url.startswith("http") for url in calls)
    assert "no network" in message and f"in {tmp_path / folder / 'raw'}" in message
    assert "-images-idx3-ubyte" in message and "\n" not in message
    assert not any((tmp_path / folder / "raw").iterdir())


# --------------------------------------------------------------------------- paths


def test_an_image_folder_is_a_data_set(tmp_path):
    root = write_image_folder(tmp_path / "glyphs", mode="RGB")
    loaded = load_dataset(str(root))
    assert loaded.name == str(root.resolve()) and loaded.classes == CLASSES
    assert loaded.train_images.shape == (120, 1, 28, 28) and loaded.test_images.shape[0] == 40
    images, labels = fake_images(120, 1)
    order = labels.argsort(stable=True)  # files are read class by class
    assert torch.equal(loaded.train_labels, labels[order])
    assert torch.equal(loaded.train_images, images[order])
    assert load_dataset(str(root)).checksum == loaded.checksum


def test_without_test_a_seeded_sixth_is_held_out_and_aetool_says_so(tmp_path):
    root = write_image_folder(tmp_path / "glyphs", n_train=60, test=False)
    with pytest.warns(DataWarning, match=r"no test/ folder: 10 of its 60 training images"):
        loaded = load_dataset(str(root))
    assert loaded.train_images.shape[0] == 50 and loaded.test_images.shape[0] == 10
    with pytest.warns(DataWarning):
        assert load_dataset(str(root)).checksum == loaded.checksum


def test_other_sizes_are_resized_only_when_asked(tmp_path):
    root = write_image_folder(tmp_path / "big", n_train=30, n_test=10, size=32)
    with pytest.raises(DataError, match=r"40 images that are not 28x28 \(32x32: 40, e.g. "):
        load_dataset(str(root))
    loaded = load_dataset(str(root), resize=True)
    assert loaded.train_images.shape == (30, 1, 28, 28)
    with pytest.raises(DataSettingError, match="resize applies to image folders only"):
        load_dataset("mnist", resize=True)


def test_an_npz_is_a_data_set_uint8_or_float(tmp_path):
    ints = load_dataset(str(write_npz(tmp_path / "a.npz")))
    floats = load_dataset(str(write_npz(tmp_path / "b.npz", floats=True)))
    assert torch.equal(ints.train_images, floats.train_images)
    assert ints.checksum == floats.checksum and ints.classes is None
    named = load_dataset(str(write_npz(tmp_path / "c.npz", classes=np.array(CLASSES))))
    assert named.classes == CLASSES


def test_an_idx_folder_is_a_data_set(tmp_path):
    gz = load_dataset(str(write_idx_folder(tmp_path / "gz")))
    plain = load_dataset(str(write_idx_folder(tmp_path / "plain", prefix="", gz=False)))
    assert gz.checksum == plain.checksum and gz.train_images.shape == (300, 1, 28, 28)


def test_data_without_labels_loads_without_labels(tmp_path):
    for path in (write_npz(tmp_path / "u.npz", labelled=False),
                 write_idx_folder(tmp_path / "idx", labelled=False),
                 write_image_folder(tmp_path / "img", 30, 10, labelled=False)):
        loaded = load_dataset(str(path))
        assert loaded.train_labels is None and loaded.test_labels is None
        assert not loaded.labelled and data.split_train_val(loaded, 5).val_labels is None


def test_a_registered_name_wins_and_a_path_resolves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "mine.npz")
    (tmp_path / "mnist").mkdir()
    assert resolve_dataset("mnist") == "mnist"
    assert resolve_dataset("mine.npz") == str(tmp_path / "mine.npz")
    assert resolve_dataset("./mine.npz") == str(tmp_path / "mine.npz")


def test_a_changed_data_set_is_refused(tmp_path):
    before = load_dataset(str(write_npz(tmp_path / "d.npz")))
    after = load_dataset(str(write_npz(tmp_path / "d.npz", n_train=301)))
    check_unchanged(after.name, after.checksum, after.checksum, "run 'x'")
    check_unchanged(after.name, after.checksum, None, "run 'x'")
    with pytest.raises(DataError, match=r"d.npz has changed since run 'x' was trained on it"):
        check_unchanged(after.name, after.checksum, before.checksum, "run 'x'")


# --------------------------------------------------------------------------- bad paths


def bad(tmp_path, kind):
    """A bad data set of each kind the issue names, and what its message must say."""
    if kind == "missing":
        return tmp_path / "nowhere", DataSettingError, "nowhere does not exist"
    if kind == "empty":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", DataSettingError, "empty is empty"
    if kind == "mixed sizes":
        root = write_image_folder(tmp_path / "mixed", 24, 6)
        from PIL import Image
        Image.new("L", (30, 20)).save(root / "train" / "a" / "odd.png")
        return root, DataError, r"1 images that are not 28x28 \(30x20: 1, e.g. train/a/odd.png\)"
    if kind == "corrupt png":
        root = write_image_folder(tmp_path / "broken", 24, 6)
        png = root / "test" / "b" / "0001.png"
        if not png.exists():
            png = next((root / "test").rglob("*.png"))
        png.write_bytes(png.read_bytes()[:60])
        return root, DataError, f"{png} cannot be read as an image"
    if kind == "npz keys":
        path = tmp_path / "keys.npz"
        np.savez(path, images=np.zeros((3, 28, 28), np.uint8))
        return path, DataError, "keys.npz has no x_train or x_test .it holds images."
    if kind == "npz shapes":
        return (write_npz(tmp_path / "s.npz", x_test=np.zeros((4, 32, 32), np.uint8)), DataError,
                r"s.npz: x_test has shape \(4, 32, 32\); expected \(N, 28, 28\)")
    if kind == "npz nan":
        x = np.full((4, 28, 28), np.nan, np.float32)
        return (write_npz(tmp_path / "n.npz", x_test=x), DataError,
                "n.npz: x_test has NaN or infinite values")
    if kind == "npz label count":
        return (write_npz(tmp_path / "c.npz", y_test=np.zeros(3, np.uint8)), DataError,
                "c.npz: y_test has 3 labels for 100 images")
    if kind == "labels out of range":
        y = np.full(100, 12, np.uint8)
        return (write_npz(tmp_path / "r.npz", y_test=y, classes=np.array(CLASSES)), DataError,
                r"r.npz: the test labels run from 12 to 12, outside 0-9 \(it has 10 classes\)")
    if kind == "negative labels":
        y = np.full(100, -1, np.int64)
        return (write_npz(tmp_path / "neg.npz", y_test=y), DataError,
                "neg.npz: the test labels run from -1 to -1, outside 0 or more")
    if kind == "idx labels":
        root = write_idx_folder(tmp_path / "idx", gz=False)
        labels = root / "emnist-digits-test-labels-idx1-ubyte"
        labels.write_bytes(idx_bytes(torch.zeros(7, dtype=torch.uint8), "labels"))
        return root, DataError, "idx: 7 test labels for 100 images"
    if kind == "not a data set":
        (tmp_path / "notes.txt").write_text("hello")
        return tmp_path / "notes.txt", DataSettingError, "notes.txt is not a data set"
    raise AssertionError(kind)


BAD_KINDS = ["missing", "empty", "mixed sizes", "corrupt png", "npz keys", "npz shapes", "npz nan",
             "npz label count", "labels out of range", "negative labels", "idx labels",
             "not a data set"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_data_set_is_one_sentence_naming_the_file(kind, tmp_path):
    path, error, message = bad(tmp_path, kind)
    with pytest.raises(error, match=message) as caught:
        load_dataset(str(path))
    assert "\n" not in str(caught.value)


def test_kmnist_and_emnist_are_fetched_with_torchvision_s_downloader(tmp_path, monkeypatch):
    """The downloads are faked: each one writes what torchvision's would (KMNIST's four files
    unpacked; EMNIST's zip unpacked into gzip/), and aetool reads and tidies the rest."""
    import torchvision.datasets.utils as tv

    images, labels = fake_images(30, 1)
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, md5))
        raw = Path(download_root)
        if "kmnist" in url:
            kind = "images" if "images" in filename else "labels"
            (raw / filename.removesuffix(".gz")).write_bytes(idx_bytes(
                images if kind == "images" else labels, kind))
            return
        (raw / "gzip.zip").write_bytes(b"zip")
        (raw / "gzip").mkdir()
        for split in ("balanced", "letters", "byclass"):
            for part in ("train", "test"):
                for kind, t, dims in (("images", images, 3), ("labels", labels + 1, 1)):
                    name = f"emnist-{split}-{part}-{kind}-idx{dims}-ubyte.gz"
                    (raw / "gzip" / name).write_bytes(gzip.compress(idx_bytes(t, kind)))

    monkeypatch.setattr(tv, "download_and_extract_archive", fake_download)
    kmnist = load_dataset("kmnist", tmp_path)
    assert kmnist.train_images.shape == (30, 1, 28, 28) and len(calls) == 4
    assert all(md5 for _, md5 in calls) and calls[0][0].startswith("http://codh.rois.ac.jp/")
    letters = load_dataset("emnist-letters", tmp_path)
    assert letters.classes[int(letters.train_labels[0])] != "N/A"
    raw = tmp_path / "EMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"emnist-{s}-{part}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        for s in ("balanced", "letters") for part in ("train", "test")
        for kind in ("images", "labels"))
    load_dataset("emnist", tmp_path)
    assert len(calls) == 5  # one zip for both EMNIST sets
