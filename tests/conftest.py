"""Shared fixtures: small fabricated MNIST-like data, a workspace, and the real data if present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from aetool.data import FILES, idx_bytes, load_dataset, missing_files, split_train_val

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEED_CHECKPOINTS = SHARED / "seed" / "checkpoints"

# Keep the user's installed plugins out of the tests (built-ins still load).
os.environ.setdefault("AETOOL_NO_ENTRYPOINTS", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def fake_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-shaped uint8 images: one blurred random template per class plus noise and shifts,
    so that classes separate in a latent space and an autoencoder has something to learn."""
    g = torch.Generator().manual_seed(1234)
    templates = (torch.rand(10, 1, 7, 7, generator=g) > 0.55).float()
    templates = torch.nn.functional.interpolate(templates, size=(20, 20), mode="bilinear")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.zeros(n, 1, 28, 28)
    shifts = torch.randint(0, 9, (n, 2), generator=g)
    for k in range(n):  # fixture set-up only, not a hot loop
        r, c = shifts[k].tolist()
        images[k, :, r : r + 20, c : c + 20] = templates[labels[k]]
    images = (images + 0.1 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels


def write_fake_mnist(root: Path, n_train: int = 600, n_test: int = 200, folder: str = "MNIST"):
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = fake_images(n, seed)
        (raw / FILES[(split, "images")]).write_bytes(idx_bytes(images, "images"))
        (raw / FILES[(split, "labels")]).write_bytes(idx_bytes(labels, "labels"))
    return root


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory) -> Path:
    """A data root with a small fabricated MNIST (600 train, 200 test images)."""
    return write_fake_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def fake_data(fake_data_dir):
    return load_dataset("mnist", fake_data_dir)


@pytest.fixture()
def fake_split(fake_data):
    return split_train_val(fake_data, val_size=100, seed=0)


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty runs workspace, also set as $AETOOL_RUNS."""
    root = tmp_path / "runs"
    monkeypatch.setenv("AETOOL_RUNS", str(root))
    return root


@pytest.fixture(scope="session")
def real_mnist():
    """The real MNIST, if it is in the cache or can be fetched; otherwise the test skips."""
    if missing_files("mnist") and os.environ.get("AETOOL_TEST_OFFLINE"):
        pytest.skip("real MNIST is not cached and AETOOL_TEST_OFFLINE is set")
    try:
        return load_dataset("mnist")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"real MNIST could not be had here: {exc}")


@pytest.fixture(scope="session")
def seed_checkpoints() -> Path:
    if not SEED_CHECKPOINTS.is_dir():
        pytest.skip(f"the seed report's checkpoints are not at {SEED_CHECKPOINTS}")
    return SEED_CHECKPOINTS
