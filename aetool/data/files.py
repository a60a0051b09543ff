"""A path on disk as a data set: an image folder, an `.npz` archive or a folder of IDX files.

- An image folder in torchvision's `ImageFolder` layout: `train/<class>/*.png|jpg|...` and
  `test/<class>/*` (or images straight in `train/` and `test/` for a set without labels).
  Without `test/`, a seeded sixth of `train/` is held out as the test set, with a
  `DataWarning` saying so. Images are read once with Pillow and converted to one channel
  (`convert("L")`); any size but 28x28 is refused, listing the sizes found, unless `resize`
  (then Pillow's Lanczos filter resizes each image to 28x28, ignoring its aspect ratio).
- An `.npz` archive in the layout of Keras's `mnist.npz`: `x_train`, `x_test` (uint8, or
  float in [0, 1]), and `y_train`, `y_test` for labels; an optional `classes` array of names.
- A folder of IDX files, as EMNIST, KMNIST and QMNIST ship them: one
  `*train*-images-idx3-ubyte[.gz]` and one `*test*` (or `t10k`) images file, each with its
  `-labels-idx1-ubyte[.gz]` file, or with none.

`path_kind` tells them apart cheaply (a bad path is a `DataSettingError`); `load_path` reads
one into `DatasetArrays` (a bad file is a `DataError` naming it). Nothing is cached.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from aetool.data.idx import SIDE, read_idx_file
from aetool.data.registry import DatasetArrays
from aetool.errors import DataError, DataSettingError, first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff",
                    ".webp")
HOLD_OUT = 6  # without test/, 1/HOLD_OUT of train/ is held out as the test set
HOLD_OUT_SEED = 0
RESIZE_FILTER = "LANCZOS"  # Pillow's Image.Resampling member used by `resize`
_IDX_IMAGES = re.compile(r"^(?P<stem>.+)-images-idx3-ubyte(?:\.gz)?$")
_OWN_FILE = "replace it with a good copy"
NPZ_LAYOUT = ("an .npz data set holds x_train and x_test (and y_train and y_test for labels), "
              "as Keras's mnist.npz does")


class DataWarning(UserWarning):
    """Something about the data the user should know, that did not stop the command."""


def path_kind(path: Path | str) -> str:
    """`folder` (ImageFolder layout), `npz` or `idx` for a path that can be a data set; a
    `DataSettingError` saying why not otherwise. Looks at names only, reads no image."""
    path = Path(path)
    if not path.exists():
        raise DataSettingError("dataset", f"The data set path {path} does not exist.")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        raise DataSettingError("dataset", f"{path} is not a data set: a file must be an .npz "
                               "archive (x_train, y_train, x_test, y_test).")
    if (path / "train").is_dir():
        return "folder"
    if any(_IDX_IMAGES.match(p.name) for p in path.iterdir()):
        return "idx"
    what = "is empty" if not any(path.iterdir()) else "holds neither a train/ folder of " \
        "images nor *-images-idx3-ubyte files"
    raise DataSettingError("dataset", f"The data set folder {path} {what}.")


def load_path(path: Path | str, resize: bool = False
              ) -> tuple[DatasetArrays, tuple[str, ...] | None]:
    """Read the data set at `path` (any of the three layouts) and its class names, if any."""
    path = Path(path)
    kind = path_kind(path)
    if resize and kind != "folder":
        raise DataSettingError("resize", f"resize applies to image folders only; {path} is "
                               f"{'an .npz file' if kind == 'npz' else 'a folder of IDX files'}.")
    if kind == "folder":
        return load_image_folder(path, resize)
    if kind == "npz":
        return load_npz(path)
    return load_idx_folder(path), None


# --------------------------------------------------------------------------- image folders


def _split_files(folder: Path) -> tuple[list[Path], list[str | None]]:
    """The image files under a split folder and each one's class (its sub-folder), sorted."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    subfolders = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if subfolders and loose:
        raise DataError(f"{folder} holds both images ({loose[0].name}) and class folders "
                        f"({subfolders[0].name}); put every image in a class folder, or none.")
    if not subfolders:
        return loose, [None] * len(loose)
    files, owners = [], []
    for sub in subfolders:
        found = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_EXTENSIONS)
        files += found
        owners += [sub.name] * len(found)
    return files, owners


def _read_images(files: list[Path], resize: bool,
                 wrong: dict[tuple[int, int], list[Path]]) -> np.ndarray | None:
    """The images as one uint8 array (N, 28, 28), each converted to one channel; those of
    another size are resized when `resize`, else collected in `wrong` (and None returned)."""
    from PIL import Image

    pixels = []
    for file in files:  # read once at load time; training never touches the files
        try:
            with Image.open(file) as image:
                grey = image.convert("L")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{file} cannot be read as an image ({first_line(exc)}); "
                            "replace or remove it.") from None
        if grey.size != (SIDE, SIDE):
            if not resize:
                wrong.setdefault(grey.size, []).append(file)
                continue
            grey = grey.resize((SIDE, SIDE), getattr(Image.Resampling, RESIZE_FILTER))
        pixels.append(np.asarray(grey, dtype=np.uint8))
    return None if wrong else np.stack(pixels)


def _refuse_sizes(root: Path, wrong: dict[tuple[int, int], list[Path]]) -> None:
    sizes = "; ".join(f"{w}x{h}: {len(fs)}, e.g. {fs[0].relative_to(root)}"
                      for (w, h), fs in sorted(wrong.items(), key=lambda kv: -len(kv[1])))
    raise DataError(f"{root} has {sum(map(len, wrong.values()))} images that are not 28x28 "
                    f"({sizes}); resize them, or let aetool resize them (resize, `--resize`).")


def load_image_folder(path: Path, resize: bool = False
                      ) -> tuple[DatasetArrays, tuple[str, ...] | None]:
    """An ImageFolder tree (`train/<class>/*`, `test/<class>/*`) as arrays and class names."""
    splits = {}
    for split in ("train", "test"):
        folder = path / split
        if split == "test" and not folder.is_dir():
            continue
        files, owners = _split_files(folder)
        if not files:
            raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        splits[split] = (files, owners)
    train_owners = splits["train"][1]
    classes = tuple(dict.fromkeys(train_owners)) if train_owners[0] is not None else None
    arrays, wrong = {}, {}
    for split, (files, owners) in splits.items():
        images = _read_images(files, resize, wrong)
        arrays[split] = (images, _folder_labels(path / split, owners, classes))
    if wrong:
        _refuse_sizes(path, wrong)
    if "test" not in arrays:
        arrays["train"], arrays["test"] = _hold_out(path, *arrays["train"])
    (train, train_labels), (test, test_labels) = arrays["train"], arrays["test"]
    return DatasetArrays(train, test, train_labels, test_labels), classes


def _folder_labels(folder: Path, owners: list[str | None],
                   classes: tuple[str, ...] | None) -> np.ndarray | None:
    if classes is None and owners[0] is None:
        return None
    if classes is None or owners[0] is None:
        raise DataError(f"{folder} and the train/ folder disagree: one sorts its images into "
                        "class folders and the other does not.")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({o for o in owners if o not in index})
    if unknown:
        raise DataError(f"{folder / unknown[0]} is a class that train/ does not have; "
                        f"train/ has: {', '.join(classes)}.")
    return np.array([index[o] for o in owners], dtype=np.int64)


def _hold_out(path: Path, images: np.ndarray, labels: np.ndarray | None):
    n = images.shape[0]
    if n < HOLD_OUT:
        raise DataError(f"{path / 'train'} has {n} images; without a test/ folder a sixth of "
                        f"them is held out as the test set, so it needs at least {HOLD_OUT}.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLD_OUT_SEED)).numpy()
    test, train = order[: n // HOLD_OUT], order[n // HOLD_OUT:]
    warnings.warn(DataWarning(f"{path} has no test/ folder: {len(test)} of its {n} training "
                              f"images (1/{HOLD_OUT}, seed {HOLD_OUT_SEED}) are held out as the "
                              "test set."), stacklevel=3)
    pick = (lambda idx: None) if labels is None else (lambda idx: labels[idx])
    return (images[train], pick(train)), (images[test], pick(test))


# --------------------------------------------------------------------------- .npz archives


def load_npz(path: Path) -> tuple[DatasetArrays, tuple[str, ...] | None]:
    """An .npz archive in the layout of Keras's `mnist.npz`, checked key by key. Nothing in
    it is ever unpickled: a file that is not a zip archive, or an array of Python objects, is
    refused in one sentence."""
    _check_zip(path)
    found: dict[str, np.ndarray] = {}
    key = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                found[key] = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc):  # numpy's message suggests allow_pickle: never
            raise DataError(f"{path}: {key} holds Python objects (pickled data), which aetool "
                            "never loads; save it as a plain array of numbers.") from None
        raise DataError(f"{path} is not a valid .npz file ({first_line(exc)}).") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a valid .npz file ({first_line(exc)}).") from None
    missing = [k for k in ("x_train", "x_test") if k not in found]
    if missing:
        held = ", ".join(sorted(found)) or "nothing"
        raise DataError(f"{path} has no {' or '.join(missing)} (it holds {held}); {NPZ_LAYOUT}.")
    if ("y_train" in found) != ("y_test" in found):
        has = "y_train" if "y_train" in found else "y_test"
        raise DataError(f"{path} has {has} but not its partner; give labels for both splits "
                        "or for neither.")
    train = _npz_images(found["x_train"], "x_train", path)
    test = _npz_images(found["x_test"], "x_test", path)
    labels = [None, None]
    if "y_train" in found:
        labels = [_npz_labels(found[f"y_{s}"], f"y_{s}", images.shape[0], path)
                  for s, images in (("train", train), ("test", test))]
    return DatasetArrays(train, test, *labels), _npz_classes(found.get("classes"), path)


def _check_zip(path: Path) -> None:
    """Refuse a file that does not start as a zip archive does (an .npz is one), before numpy
    would try other formats on it, pickle among them."""
    try:
        with path.open("rb") as handle:
            start = handle.read(4)
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {first_line(exc)}.") from None
    if start not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{path} is not a valid .npz file (not a zip archive of .npy "
                        f"arrays); {NPZ_LAYOUT}.")


def _npz_images(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{path}: {key} has shape {array.shape}; expected (N, 28, 28) images.")
    if array.shape[0] == 0:
        raise DataError(f"{path}: {key} holds no images.")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind != "f":
        raise DataError(f"{path}: {key} has dtype {array.dtype}; expected uint8, or float "
                        "in [0, 1].")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: {key} has NaN or infinite values.")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise DataError(f"{path}: {key} has values from {low:g} to {high:g}; float images must "
                        "be in [0, 1].")
    return np.rint(array.astype(np.float64) * 255).astype(np.uint8)


def _npz_labels(array: np.ndarray, key: str, count: int, path: Path) -> np.ndarray:
    if array.ndim != 1:
        raise DataError(f"{path}: {key} has shape {array.shape}; expected one label per image.")
    if array.dtype.kind not in "iu":
        raise DataError(f"{path}: {key} has dtype {array.dtype}; labels must be whole numbers.")
    if array.shape[0] != count:
        raise DataError(f"{path}: {key} has {array.shape[0]} labels for {count} images.")
    return array.astype(np.int64)


def _npz_classes(array: np.ndarray | None, path: Path) -> tuple[str, ...] | None:
    if array is None:
        return None
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise DataError(f"{path}: classes must be a list of names (strings), got "
                        f"{array.dtype} of shape {array.shape}.")
    if array.size == 0:
        raise DataError(f"{path}: classes is an empty list; give one name per class, or leave "
                        "classes out.")
    return tuple(str(c) for c in array.tolist())


# --------------------------------------------------------------------------- IDX folders


def load_idx_folder(path: Path) -> DatasetArrays:
    """One train and one test images file (and their labels files, or none) from a folder."""
    images: dict[str, list[Path]] = {"train": [], "test": []}
    for file in sorted(path.iterdir()):
        match = _IDX_IMAGES.match(file.name)
        if match:
            stem = match["stem"].lower()
            split = "test" if "test" in stem or "t10k" in stem else \
                "train" if "train" in stem else None
            if split is not None:
                images[split].append(file)
    for split, files in images.items():
        if len(files) != 1:
            what = "no" if not files else f"{len(files)}"
            names = f" ({', '.join(f.name for f in files)})" if files else ""
            raise DataSettingError("dataset", f"{path} holds {what} {split} images files"
                                   f"{names}; a folder of IDX files holds one data set: one "
                                   "*train*-images-idx3-ubyte and one *test* (or t10k) file.")
    arrays = {}
    for split, (file,) in images.items():
        arrays[f"{split}_images"] = read_idx_file(file, "images", None, None, _OWN_FILE)
        stem = _IDX_IMAGES.match(file.name)["stem"]
        labels = [p for p in (path / f"{stem}-labels-idx1-ubyte",
                              path / f"{stem}-labels-idx1-ubyte.gz") if p.is_file()]
        arrays[f"{split}_labels"] = (read_idx_file(labels[0], "labels", None, None, _OWN_FILE)
                                     if labels else None)
    if (arrays["train_labels"] is None) != (arrays["test_labels"] is None):
        raise DataError(f"{path} has labels for one split only; give a -labels-idx1-ubyte file "
                        "for both images files or for neither.")
    return DatasetArrays(**arrays)
