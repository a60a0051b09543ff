"""Run folders: what each file is called, atomic writes, and finding runs in a workspace.

A workspace (default `./runs`, or `--runs` / `$AETOOL_RUNS`) holds one folder per trained
model (`ed4/`, `ed32/`, ...) and a `search/` folder. A run folder holds:

    config.json    the resolved settings it was trained with
    history.json   per-epoch train and validation loss, learning rate and seconds
    model.pt       the best weights by validation loss (a bare state_dict)
    state.pt       everything needed to resume (model, optimiser, RNG states, history)
    metrics.json   written last: final test MSE, best epoch, timing, device, versions

Every file is written under a temporary name and renamed into place, so an interrupted run
never leaves a half-written file. Everything loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aetool.data import write_atomic
from aetool.errors import RunError

CONFIG = "config.json"
HISTORY = "history.json"
MODEL = "model.pt"
STATE = "state.pt"
METRICS = "metrics.json"
RESERVED = {"search"}


def default_runs_root() -> Path:
    return Path(os.environ.get("AETOOL_RUNS", "runs"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(path: Path | str, obj: Any) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    write_atomic(Path(path), (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


def load_json(path: Path | str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc}).") from None


def save_torch(path: Path | str, obj: Any) -> None:
    """`torch.save` atomically; `obj` must hold only tensors and plain Python values."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(Path(path), buffer.getvalue())


def load_torch(path: Path | str) -> Any:
    """`torch.load(weights_only=True)` with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle refused, truncated file...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path} cannot be read safely ({msg}).") from None


@dataclass
class Run:
    """A trained model's folder and what it says about itself."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ed(self) -> int:
        return int(self.config["ed"])

    @property
    def finished(self) -> bool:
        return bool(self.metrics)

    def history(self) -> list[dict[str, Any]]:
        path = self.path / HISTORY
        return load_json(path) if path.exists() else []

    def model(self, device: torch.device | str = "cpu"):  # noqa: ANN201
        from aetool.model import load_model

        return load_model(self.path / MODEL, self.ed, device)


def open_run(path: Path | str) -> Run:
    """Read a run folder; it needs at least its config and its best checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"Run folder {path} does not exist.")
    if not (path / CONFIG).exists():
        raise RunError(f"{path} is not a run folder (it has no {CONFIG}).")
    config = load_json(path / CONFIG)
    if not isinstance(config, dict) or "ed" not in config:
        raise RunError(f"{path / CONFIG} does not describe a run (no 'ed').")
    metrics = load_json(path / METRICS) if (path / METRICS).exists() else {}
    return Run(path, config, metrics)


def list_runs(root: Path | str | None = None, finished_only: bool = True) -> list[Run]:
    """Every run folder in the workspace, sorted by encoding dimension then name."""
    root = Path(root) if root is not None else default_runs_root()
    if not root.is_dir():
        return []
    runs = []
    for child in sorted(root.iterdir()):
        if child.name in RESERVED or not (child / CONFIG).exists():
            continue
        if not (child / MODEL).exists():
            continue
        run = open_run(child)
        if finished_only and not run.finished:
            continue
        runs.append(run)
    return sorted(runs, key=lambda r: (r.ed, r.name))


def select_runs(
    root: Path | str | None = None, names: list[str] | None = None, eds: list[int] | None = None
) -> list[Run]:
    """Runs picked by folder name (`--run`) or encoding dimension (`--ed`); all by default."""
    root = Path(root) if root is not None else default_runs_root()
    if names:
        picked = [open_run(root / n if not Path(n).is_dir() else n) for n in names]
    else:
        picked = list_runs(root)
        if not picked:
            raise RunError(
                f"No finished runs in {root}; train one with `aetool fit --ed 4` "
                "or point --runs / AETOOL_RUNS at your workspace."
            )
    if eds:
        picked = [r for r in picked if r.ed in eds]
        if not picked:
            raise RunError(f"No run in {root} has encoding dimension {', '.join(map(str, eds))}.")
    return picked
