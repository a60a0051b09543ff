"""Reconstruction error under noise (the report's Table 1) and the example image grid.

For each configured noise: corrupt every clean test image, reconstruct it, and measure the MSE
against the clean image, over the whole test set in batches on the model's device. Each noise
gets its own generator seeded with `seed`, so every row is reproducible on its own.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aetool import workspace as runs
from aetool.data import check_unchanged, load_dataset, to_float
from aetool.errors import AetoolError, ProgressEvent, ProgressFn, SettingError
from aetool.files import write_atomic
from aetool.noises import ConfiguredNoise
from aetool.train.step import evaluate, make_generator

RowCallback = Callable[[dict[str, Any]], None]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def noise_table(
    model: torch.nn.Module,
    test_images: torch.Tensor,
    noises: Sequence[ConfiguredNoise],
    seed: int = 42,
    batch_size: int = 1000,
    on_row: RowCallback | None = None,
) -> list[dict[str, Any]]:
    """One row per noise: {"label", "noise", "params", "mse"}, the MSE between the
    reconstruction of the corrupted uint8 `test_images` and the clean images."""
    device = model_device(model)
    images = test_images.to(device)
    rows = []
    for noise in noises:
        generator = make_generator(device, seed)
        mse = evaluate(model, images, batch_size, noise, generator)
        row = {**noise.as_dict(), "mse": mse}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


@torch.no_grad()
def render_examples(
    model: torch.nn.Module,
    test_images: torch.Tensor,
    noises: Sequence[ConfiguredNoise],
    path: Path | str,
    seed: int = 42,
    count: int = 3,
    title: str | None = None,
) -> Path:
    """A PNG grid: one row per noise, and for each of the first `count` test images its clean,
    corrupted and reconstructed versions side by side. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    device = model_device(model)
    clean = to_float(test_images[:count].to(device))
    count = clean.shape[0]
    was_training = model.training
    model.eval()
    panels = []
    for noise in noises:
        corrupted = noise(clean, make_generator(device, seed))
        panels.append((noise.label, corrupted.cpu(), model(corrupted).cpu()))
    model.train(was_training)
    clean = clean.cpu()

    # One mosaic image (fast to draw): tiles of clean | corrupted | reconstructed per image.
    side, pad = clean.shape[-1], 2
    tiles = torch.stack([
        torch.stack([image for k in range(count)
                     for image in (clean[k], corrupted[k], reconstructed[k])])
        for _, corrupted, reconstructed in panels
    ])[:, :, 0].clamp(0, 1)  # (rows, 3 * count, H, W)
    rows, columns = tiles.shape[:2]
    padded = torch.nn.functional.pad(tiles, (pad, pad, pad, pad), value=1.0)
    mosaic = padded.permute(0, 2, 1, 3).reshape(rows * (side + 2 * pad), columns * (side + 2 * pad))

    figure = Figure(figsize=(0.55 * columns + 1.2, 0.55 * rows + 0.8))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.imshow(mosaic.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    step = side + 2 * pad
    axis.set_yticks([step * (r + 0.5) for r in range(rows)], [label for label, *_ in panels])
    kinds = ("clean", "corrupted", "reconstructed")
    axis.set_xticks([step * (c + 0.5) for c in range(columns)],
                    [kinds[c % 3] for c in range(columns)], rotation=90, fontsize=7)
    axis.xaxis.tick_top()
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    if title:
        axis.set_xlabel(title)
    figure.tight_layout()
    return _save_figure(figure, Path(path))


def _save_figure(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    write_atomic(path, buffer.getvalue())
    return path


def table_record(
    name: str, ed: int, seed: int, test_images: int, rows: list[dict[str, Any]],
    examples: str | None = runs.NOISE_EXAMPLES,
) -> dict[str, Any]:
    """The content of `noise_table.json` (`aetool.workspace.NoiseTable`)."""
    return runs.NoiseTable(run=name, ed=ed, seed=seed, test_images=test_images,
                           rows=[runs.NoiseRow.build(row) for row in rows],
                           examples=examples).to_json()


def save_noise_table(folder: Path | str, record: dict[str, Any] | runs.NoiseTable) -> Path:
    """Write `noise_table.json` into a run folder (atomically), checked
    (`aetool.workspace.NoiseTable`)."""
    path = Path(folder) / runs.NOISE_TABLE
    table = record if isinstance(record, runs.NoiseTable) else runs.NoiseTable.from_json(record)
    return table.write(path)


def corrupt_and_save(
    model: torch.nn.Module,
    test_images: torch.Tensor,
    noises: Sequence[ConfiguredNoise],
    folder: Path | str | None,
    name: str,
    ed: int,
    seed: int = 42,
    batch_size: int = 1000,
    examples: int = 3,
    on_row: RowCallback | None = None,
) -> dict[str, Any]:
    """The noise table of one model; with a `folder`, also the example grid and the JSON,
    written while holding the folder's run lock (`aetool.workspace.RunLock`)."""
    if folder is not None:
        with runs.run_lock(folder):
            return _corrupt_and_save(model, test_images, noises, Path(folder), name, ed, seed,
                                     batch_size, examples, on_row)
    return _corrupt_and_save(model, test_images, noises, None, name, ed, seed, batch_size,
                             examples, on_row)


def _corrupt_and_save(model: torch.nn.Module, test_images: torch.Tensor,
                      noises: Sequence[ConfiguredNoise], folder: Path | None, name: str, ed: int,
                      seed: int, batch_size: int, examples: int,
                      on_row: RowCallback | None) -> dict[str, Any]:
    rows = noise_table(model, test_images, noises, seed, batch_size, on_row)
    picture = None
    if folder is not None and examples > 0:
        render_examples(model, test_images, noises, Path(folder) / runs.NOISE_EXAMPLES, seed,
                        examples, title=f"{name} (ED={ed})")
        picture = runs.NOISE_EXAMPLES
    record = table_record(name, ed, seed, int(test_images.shape[0]), rows, picture)
    if folder is not None:
        save_noise_table(folder, record)
    return record


# --------------------------------------------------------------------------- over many models


@dataclass
class Target:
    """A model to corrupt: where it comes from and where its results go (None: nowhere)."""

    name: str
    ed: int
    model: torch.nn.Module
    dataset: str
    folder: Path | None
    resize: bool = False  # the run's `resize` (an image folder's images resized to 28x28)
    dataset_sha256: str | None = None  # the data it was trained on; other data is refused
    spec: str = "course"  # the model (config.json's `model`), shown in the tables


def run_targets(found: Sequence[runs.Run], device: torch.device | str,
                dataset: str | None = None,
                skipped: list[runs.Unreadable] | None = None) -> list[Target]:
    """Trained runs as targets, each with the data set it was trained on (unless `dataset`),
    which must not have changed since (its sha256 is checked when it is loaded). A run that
    cannot be loaded (damaged weights, a model or data set not available here) is an error,
    unless `skipped` is a list: then it is appended there and the others are returned."""
    targets = []
    for run in found:
        try:
            if dataset:
                targets.append(Target(run.name, run.ed, run.model(device), dataset, run.path,
                                      spec=run.settings.model))
                continue
            source, resize = run.dataset()
            targets.append(Target(run.name, run.ed, run.model(device), source, run.path,
                                  resize, run.metrics.get("dataset_sha256"),
                                  spec=run.settings.model))
        except AetoolError as exc:
            skip(run.name, exc, skipped)
    return targets


def skip(name: str, exc: AetoolError, skipped: list[runs.Unreadable] | None) -> None:
    """Note that run `name` is left out because of `exc`, or raise it when nothing may be
    skipped (`skipped` is None)."""
    if skipped is None:
        raise exc
    skipped.append(runs.Unreadable(name, str(exc)))


def _folder_name(checkpoint: Path) -> str:
    """The results folder of a bare checkpoint under `--output`: its file name's stem, which
    must pass the run-name rule (a file named `...pt` would otherwise write into `..`)."""
    try:
        return runs.check_run_name(checkpoint.stem)
    except SettingError:
        raise SettingError("checkpoint", f"Checkpoint {checkpoint}: its results folder would be "
                           f"named {checkpoint.stem!r}, which is not allowed (a folder name is "
                           f"{runs.NAME_RULE}); rename the file.") from None


def checkpoint_targets(paths: Sequence[Path | str], device: torch.device | str,
                       eds: Sequence[int] | None = None, output: Path | str | None = None,
                       dataset: str | None = None) -> list[Target]:
    """Bare state_dict files (the report's `net_params_4.pth`...) as targets; with `output`,
    each one's results go to `output/<file name>/`."""
    from aetool.models import load_model

    targets = []
    for path in map(Path, paths):
        folder = None if output is None else Path(output) / _folder_name(path)
        model = load_model(path, None, device)
        if eds and model.encoding_dim not in eds:
            raise AetoolError(f"Checkpoint {path} has encoding dimension {model.encoding_dim}, "
                              f"not {', '.join(map(str, eds))}.")
        targets.append(Target(path.stem, model.encoding_dim, model, dataset or "mnist", folder))
    return targets


def corrupt_models(
    targets: Sequence[Target],
    noises: Sequence[ConfiguredNoise],
    device: torch.device | str = "cpu",
    *,
    data_dir: Path | str | None = None,
    seed: int = 42,
    batch_size: int = 1000,
    examples: int = 3,
    on_progress: ProgressFn | None = None,
    data_progress: ProgressFn | None = None,
    skipped: list[runs.Unreadable] | None = None,
) -> list[dict[str, Any]]:
    """The noise table of every target on its data set's test images (each set loaded once),
    saved into its folder; returns the records, each with its `folder`. A target whose data
    cannot be had (or has changed) is an error, unless `skipped` is a list (see `skip`).
    `on_progress` hears of each target as it starts and of each row (task "corrupt")."""
    test_sets: dict[tuple[str, bool], Any] = {}
    ready = []
    for target in targets:  # every data set loaded and checked before anything is written
        try:
            data = _test_set(test_sets, target, data_dir, device, data_progress)
            check_unchanged(data.name, data.checksum, target.dataset_sha256,
                            f"run {target.name!r}")
        except AetoolError as exc:
            skip(target.name, exc, skipped)
            continue
        ready.append((target, data))
    records = []
    report = on_progress or (lambda event: None)
    total = len(ready) * len(noises)
    for i, (target, data) in enumerate(ready):
        report(ProgressEvent("corrupt", i * len(noises), total, "", "rows", target.name))
        record = corrupt_and_save(target.model, data.test_images, noises, target.folder,
                                  target.name, target.ed, seed=seed, batch_size=batch_size,
                                  examples=examples,
                                  on_row=_row_events(report, target.name, i * len(noises), total))
        records.append({**record, "folder": target.folder})
    return records


def _row_events(report: ProgressFn, name: str, done: int, total: int) -> RowCallback:
    """A row callback telling `report` of each row of target `name`, `done` rows in before."""
    count = [done]

    def on_row(row: dict[str, Any]) -> None:
        count[0] += 1
        report(ProgressEvent("corrupt", count[0], total, row["label"], "rows", name))

    return on_row


def _test_set(test_sets: dict[tuple[str, bool], Any], target: Target,
              data_dir: Path | str | None, device: torch.device | str,
              data_progress: ProgressFn | None) -> Any:
    """The test images of a target's data set, loaded once (a failure is remembered too)."""
    key = (target.dataset, target.resize)
    if key not in test_sets:
        try:
            test_sets[key] = load_dataset(target.dataset, data_dir, device, data_progress,
                                          resize=target.resize).subset(train=0)
        except AetoolError as exc:
            test_sets[key] = exc
    if isinstance(test_sets[key], AetoolError):
        raise test_sets[key]
    return test_sets[key]


# --------------------------------------------------------------------------- reading tables


def read_noise_table(path: Path | str) -> dict[str, Any]:
    """A saved `noise_table.json`, checked (`aetool.workspace.NoiseTable`): a damaged one is
    a `RunError` naming it."""
    return runs.NoiseTable.read(path).to_json()


def __getattr__(name: str) -> Any:
    """The file names this module had (deprecated: they are the workspace's)."""
    return runs.old_file_name(__name__, name, ("NOISE_TABLE", "NOISE_EXAMPLES"))
