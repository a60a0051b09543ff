"""Data sets: what one is and the registry that plugins fill (`register_datasets`).

A `Dataset` has a name, a one-line description, its class names (or none) and a loader,
`load(root, progress) -> DatasetArrays`: uint8 train and test images (N, 28, 28) and their
labels, or no labels. `root` is the data cache folder (`--data-dir`), where a loader keeps the
files it fetches; `progress` (or None) is told of downloads (`loader_progress`). The built-ins
(`mnist`, `fashion-mnist`, `kmnist`, `emnist`, `emnist-letters`) are plugins of exactly this
kind in `aetool.plugins.default`. A path on disk is a data set too; `aetool.data.files` reads
those, and `aetool.data.load_dataset` checks whatever a loader returns before anything uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aetool import plugins
from aetool.errors import DataSettingError, ProgressEvent, ProgressFn


@dataclass
class DatasetArrays:
    """What a loader returns: uint8 images (N, 28, 28) as numpy arrays or tensors, and whole
    number labels (N,) for both splits, or None for both (a data set without labels)."""

    train_images: Any
    test_images: Any
    train_labels: Any | None = None
    test_labels: Any | None = None


@dataclass(frozen=True)
class Dataset:
    """A named data set: `load(root, progress)` returns its `DatasetArrays`."""

    name: str
    description: str
    load: Callable[..., DatasetArrays]
    classes: tuple[str, ...] | None = None  # names of labels 0, 1, ...; None: no names
    # Optional: `present(root) -> bool`, whether the files are in the data cache already.
    present: Callable[[Path], bool] | None = None
    plugin: str | None = None  # filled in by the registry: the plugin that registered it


def loader_progress(progress: ProgressFn | None) -> Callable[..., None] | None:
    """The `progress` a loader gets: a `ProgressFn`, called with `ProgressEvent("download
    FILE", bytes done, bytes total, unit="bytes")`; a loader may also call it the older way,
    `progress(label, bytes done, bytes total)`, which becomes that event."""
    if progress is None:
        return None

    def tell(event: ProgressEvent | str, done: int = 0, total: int | None = None) -> None:
        if not isinstance(event, ProgressEvent):
            event = ProgressEvent(f"download {event}", done, total, unit="bytes")
        progress(event)

    return tell


def registered_datasets() -> dict[str, Dataset]:
    """Every data set the plugins register, by name, each with `.plugin` set.

    The first plugin to register a name keeps it; a later one gets a `PluginWarning` naming
    both. A plugin whose hook raises, or that registers something that is not a `Dataset`,
    gets a warning; the others keep working (`aetool.plugins.collect`)."""
    return plugins.collect("register_datasets", Dataset, "data set", field="dataset",
                           error=DataSettingError)


def get_dataset(name: str) -> Dataset:
    """The registered data set `name`; a `DataSettingError` listing the others if none."""
    datasets = registered_datasets()
    if name not in datasets:
        raise DataSettingError(
            "dataset", f"Unknown dataset {name!r}; choose one of: {', '.join(datasets)} "
            "(`aetool datasets` lists them), or give the path of an image folder, an .npz file "
            "or a folder of IDX files."
        )
    return datasets[name]


def describe_datasets(root: Path) -> list[dict[str, Any]]:
    """Every registered data set as plain data: name, plugin, package, description, classes,
    and whether its files are in the data cache `root` (None when the plugin cannot tell)."""
    rows = []
    for name, dataset in registered_datasets().items():
        dist = plugins.distribution_of(dataset.plugin or "")
        present = None
        if dataset.present is not None:
            try:
                present = bool(dataset.present(root))
            except Exception as exc:  # noqa: BLE001 - a plugin's check must not stop the list
                plugins.warn(f"aetool plugin {dataset.plugin} failed to say whether data set "
                             f"{name!r} is present: {type(exc).__name__}: {exc}")
        rows.append({
            "name": name, "plugin": dataset.plugin,
            "package": f"{dist[0]} {dist[1]}" if dist else None,
            "description": dataset.description,
            "classes": list(dataset.classes) if dataset.classes is not None else None,
            "present": present,
        })
    return rows
