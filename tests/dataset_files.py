"""Small data sets in every layout aetool reads, made on the spot (never the network)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from conftest import fake_images

from aetool.data import idx_bytes

CLASSES = tuple("abcdefghij")


def write_image_folder(root: Path, n_train: int = 120, n_test: int = 40, test: bool = True,
                       labelled: bool = True, size: int = 28, mode: str = "L") -> Path:
    """train/<class>/*.png (and test/<class>/*.png): greyscale (or `mode`) PNGs."""
    from PIL import Image

    splits = [("train", n_train, 1)] + ([("test", n_test, 2)] if test else [])
    for split, n, seed in splits:
        images, labels = fake_images(n, seed)
        for k in range(n):  # fixture set-up only
            folder = root / split / (CLASSES[int(labels[k])] if labelled else "")
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(images[k, 0].numpy(), mode="L").convert(mode)
            if size != 28:
                image = image.resize((size, size))
            image.save(folder / f"{k:04d}.png")
    return root


def write_npz(path: Path, n_train: int = 300, n_test: int = 100, labelled: bool = True,
              floats: bool = False, **extra) -> Path:
    """An .npz in the layout of Keras's mnist.npz (x_train, y_train, x_test, y_test)."""
    arrays = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = fake_images(n, seed)
        x = images[:, 0].numpy()
        arrays[f"x_{split}"] = x.astype(np.float32) / 255 if floats else x
        if labelled:
            arrays[f"y_{split}"] = labels.numpy().astype(np.uint8)
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def write_idx_folder(root: Path, prefix: str = "emnist-digits-", n_train: int = 300,
                     n_test: int = 100, labelled: bool = True, gz: bool = True) -> Path:
    """{prefix}train-images-idx3-ubyte.gz ... as EMNIST, KMNIST and QMNIST ship them."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = fake_images(n, seed)
        kinds = [("images", images, 3)] + ([("labels", labels, 1)] if labelled else [])
        for kind, tensor, dims in kinds:
            data = idx_bytes(tensor, kind)
            name = f"{prefix}{split}-{kind}-idx{dims}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root
