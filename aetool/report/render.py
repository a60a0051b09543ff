"""One self-contained HTML page about a workspace: runs, losses, search, noise, latent space.

`collect_report` reads what the other commands left in the workspace (run folders from
`aetool fit`, `noise_table.json` from `aetool corrupt`, `embedding.json` from `aetool embed`,
`search/results.json` from `aetool search`) into plain data; each section of the page is there
only when its data is. `render_report` fills the Jinja2 templates of `aetool.templates` (the
repository's `templates/` folder) with autoescaping on; `write_report` saves the page.

The page opens offline: its CSS is inline, its images are inline base64 PNGs (downscaled to
keep the file small), it requests nothing from any other host and needs no JavaScript.
"""

from __future__ import annotations

import base64
import io
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from aetool import __version__
from aetool import workspace as runs
from aetool.errors import AetoolError
from aetool.files import write_atomic
from aetool.report.budget import budget_plot, budget_points

TEMPLATE = "report.html.j2"
MAX_IMAGE_WIDTH = 900  # pixels; wider PNGs are downscaled before they are inlined
MAX_IMAGE_BYTES = 350_000  # per inlined PNG; larger ones are scaled down until they fit
MIN_IMAGE_WIDTH = 320  # but never narrower than this
PLOT_DPI = 90
ENVIRONMENT_KEYS = ("aetool", "torch", "python", "device", "device_name")

SECTIONS = {
    "runs": "Runs and their settings",
    "loss": "Loss per epoch",
    "search": "Hyper-parameter search",
    "test-mse": "Test MSE per encoding dimension",
    "time-budget": "Test MSE against training time",
    "noise": "Reconstruction under noise",
    "latent": "Latent space",
    "environment": "Environment",
}


@dataclass
class ReportResult:
    path: Path
    sections: list[str]
    bytes: int
    created: Path | None = None  # the first folder made to hold `path`, if any was missing
    unreadable: list[dict[str, str]] = field(default_factory=list)  # runs left out, and why

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "sections": self.sections, "bytes": self.bytes,
                "created": None if self.created is None else str(self.created),
                "unreadable": self.unreadable}


# --------------------------------------------------------------------------- templates


def template_source(name: str) -> str | None:
    """A template's text from the installed `aetool.templates` package, else from the
    repository's `templates/` folder (a source checkout that is not installed)."""
    try:
        resource = resources.files("aetool.templates").joinpath(name)
        if resource.is_file():
            return resource.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    fallback = Path(__file__).resolve().parents[2] / "templates" / name
    return fallback.read_text(encoding="utf-8") if fallback.is_file() else None


def template_environment():  # noqa: ANN201 (jinja2.Environment, imported lazily)
    from jinja2 import Environment, FunctionLoader, StrictUndefined

    env = Environment(
        loader=FunctionLoader(template_source),
        autoescape=True,  # every value is escaped: a run called <script> shows as text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(number=format_number, percent=format_percent, seconds=format_seconds,
                       general=format_general)
    return env


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def format_number(value: Any, digits: int = 6) -> str:
    """A loss with `digits` decimals; "–" for what is not a finite number (a run that
    diverged, a value missing from an older file)."""
    if isinstance(value, str):
        return value
    if not _finite(value):
        return "–"
    if value != 0 and abs(value) < 10**-digits:  # would print as 0.000: scientific instead
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def format_general(value: Any) -> str:
    """Settings as people write them: 0.01 -> 0.01, 1e-05 -> 1e-05, 2000 -> 2000."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_general(v) for v in value)
    return str(value)


def format_percent(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}%}" if _finite(value) else "–"


def format_seconds(value: Any) -> str:
    if not _finite(value) or value < 0:
        return "–"
    value = float(value)
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


# --------------------------------------------------------------------------- images


def png_data_uri(
    data: bytes, max_width: int = MAX_IMAGE_WIDTH, max_bytes: int = MAX_IMAGE_BYTES
) -> str:
    """Image bytes as a `data:image/png;base64,...` URI that keeps the page small: at most
    `max_width` pixels wide, colour reduced to a 256-entry palette (plots and digit grids look
    the same), and scaled down further until the PNG fits in `max_bytes`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as original:
        keep = original.format == "PNG" and original.width <= max_width
        image = _flatten(original)
        if image.width > max_width:
            image = _scaled(image, max_width / image.width)
        encoded = _png_bytes(image)
        while len(encoded) > max_bytes and image.width > MIN_IMAGE_WIDTH:
            factor = max(0.5, 0.95 * math.sqrt(max_bytes / len(encoded)))
            image = _scaled(image, factor)
            encoded = _png_bytes(image)
    if keep and len(data) <= min(len(encoded), max_bytes):
        encoded = data  # the file as it is was already the smaller choice
    return "data:image/png;base64," + base64.b64encode(encoded).decode("ascii")


def _flatten(image):  # noqa: ANN001, ANN202 (PIL images)
    """Greyscale stays greyscale; anything else becomes RGB on white (the page shows images
    on a white card)."""
    from PIL import Image

    if image.mode in ("L", "1", "I;16", "I"):
        return image.convert("L")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _scaled(image, factor: float):  # noqa: ANN001, ANN202
    from PIL import Image

    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _png_bytes(image) -> bytes:  # noqa: ANN001
    from PIL import Image

    if image.mode == "RGB":
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image_file(path: Path) -> dict[str, Any]:
    """An inline image, or the reason it could not be inlined."""
    from PIL import UnidentifiedImageError

    if not path.is_file():
        return {"src": None, "problem": f"{path.name} is missing"}
    try:
        return {"src": png_data_uri(path.read_bytes()), "problem": None}
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return {"src": None, "problem": f"{path.name} cannot be read as an image ({exc})"}


def loss_plot(histories: list[tuple[str, list[dict[str, Any]], int | None]]) -> str:
    """Train (dashed) and validation (solid) loss per epoch for each run, log scale, as an
    inline PNG; the best epoch is marked. Drawn on an Agg canvas without pyplot."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 4.2), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = colormaps["tab10"]
    for i, (label, history, best_epoch) in enumerate(histories):
        color = colors(i % 10)
        epochs = [r["epoch"] for r in history]
        train = [_positive(r.get("train_loss")) for r in history]
        val = [_positive(r.get("val_loss")) for r in history]
        ax.plot(epochs, val, color=color, linewidth=1.6, label=f"{label} validation")
        ax.plot(epochs, train, color=color, linewidth=1.1, linestyle="--", alpha=0.8,
                label=f"{label} train")
        if best_epoch and best_epoch <= len(val) and val[best_epoch - 1] is not None:
            ax.plot([best_epoch], [val[best_epoch - 1]], marker="o", color=color, markersize=5)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 2.5 tick
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE per pixel (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI)
    return png_data_uri(buffer.getvalue())


def _positive(value: Any) -> float | None:
    """Loss values a log axis can draw (missing, zero or non-finite ones leave a gap)."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


# --------------------------------------------------------------------------- collecting


def _run_label(run: runs.Run) -> str:
    """`ED=4`, with the model when it is not the course one and the name when not `ed4`."""
    label = f"ED={run.ed}"
    model = str(run.config.get("model") or "course").split(":")[0]
    if model != "course":
        label += f" {model}"
    return label if run.name == runs.default_run_name(run.ed) else f"{label} ({run.name})"


def _parameters(run: runs.Run) -> int | None:
    """The run's number of weights: from metrics.json, or counted in its model when the run
    predates that figure."""
    count = run.metrics.get("parameters")
    if isinstance(count, int):
        return count
    from aetool.models import parameter_count

    return parameter_count(run.config.get("model"), run.ed)  # counted, not allocated


def _settings_row(run: runs.Run) -> dict[str, Any]:
    c, m = run.config, run.metrics
    history = run.history()
    return {
        "name": run.name,
        "ed": run.ed,
        "model": c.get("model") or "course",
        "parameters": _parameters(run),
        "dataset": c.get("dataset"),
        "preset": c.get("preset"),
        "lr": c.get("lr"),
        "weight_decay": c.get("weight_decay"),
        "batch_size": c.get("batch_size"),
        "max_epochs": c.get("max_epochs"),
        "schedule": c.get("schedule"),
        "patience": c.get("patience"),
        "tolerance": c.get("tolerance"),
        "seed": c.get("seed"),
        "noise": c.get("noise"),
        "epochs": m.get("epochs", len(history)),
        "best_epoch": m.get("best_epoch"),
        "stopped_early": m.get("stopped_early"),
        "seconds": m.get("train_seconds"),
        "finished": run.finished,
    }


def _search_results(root: Path, unreadable: list[runs.Unreadable]) -> dict[str, Any] | None:
    """The workspace's `search/results.json`, checked (`aetool.workspace.SearchResults`); a
    damaged one joins `unreadable`."""
    path = runs.Workspace(root).search_results
    if not path.is_file():
        return None
    try:
        return runs.SearchResults.read(path).to_json()
    except AetoolError as exc:
        unreadable.append(runs.Unreadable(runs.SEARCH_DIR, str(exc)))
        return None


def _search_section(results: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int]:
    """Per ED: the lr x wd grid of mean CV validation loss, dropped and best settings marked;
    and how many settings the search has still to run."""
    if results is None:
        return [], 0
    grid = results.get("grid") or {}
    details = {k: v for k, v in grid.items() if k not in ("ed", "lr", "weight_decay")}
    tables = []
    for ed, entry in sorted(results["eds"].items(), key=lambda kv: _ed_key(kv[0])):
        settings = [s for s in (entry or {}).get("settings", []) if isinstance(s, dict)]
        if not settings:
            continue
        best = (entry or {}).get("best") or {}
        best = {k: best.get(k) for k in ("lr", "weight_decay", "val_mean", "val_std")} if \
            isinstance(best, dict) and best else {}
        lrs = _axis(grid.get("lr"), settings, "lr")
        wds = _axis(grid.get("weight_decay"), settings, "weight_decay")
        cells = {(s.get("lr"), s.get("weight_decay")): s for s in settings}
        finite = [s["val_mean"] for s in settings if _positive(s.get("val_mean"))]
        low, high = (min(finite), max(finite)) if finite else (None, None)
        rows = []
        for lr in lrs:
            row = []
            for wd in wds:
                s = cells.get((lr, wd))
                if s is None:
                    row.append({"missing": True})
                    continue
                row.append({
                    "missing": False,
                    "val_mean": s.get("val_mean"),
                    "val_std": s.get("val_std"),
                    "gap": s.get("gap"),
                    "kept": s.get("kept", True),
                    "reason": s.get("reason"),
                    "best": best.get("lr") == lr and best.get("weight_decay") == wd,
                    "style": _heat_style(s.get("val_mean"), low, high),
                })
            rows.append({"lr": lr, "cells": row})
        tables.append({
            "ed": ed, "wds": wds, "rows": rows, "best": best,
            "dropped": sum(1 for s in settings if not s.get("kept", True)),
            "count": len(settings),
        })
    for table in tables:
        table["details"] = details
    missing = results.get("missing")
    return tables, len(missing) if isinstance(missing, list) else 0


def _ed_key(ed: str) -> tuple[int, str]:
    return (int(ed), ed) if str(ed).isdigit() else (10**9, str(ed))


def _axis(declared: Any, settings: list[dict[str, Any]], key: str) -> list[Any]:
    values = list(declared) if isinstance(declared, list) else []
    for s in settings:
        if s.get(key) not in values:
            values.append(s.get(key))
    return sorted(values, key=lambda v: (v is None, v if isinstance(v, (int, float)) else 0))


def _heat_style(value: Any, low: float | None, high: float | None) -> str:
    """An inline background from a light sequential palette (log scale of the loss), with a
    text colour that stays readable on it in light and dark mode."""
    if _positive(value) is None or low is None or high is None:
        return ""
    from matplotlib import colormaps

    span = math.log(high) - math.log(low)
    position = (math.log(value) - math.log(low)) / span if span > 0 else 0.0
    r, g, b, _ = colormaps["YlOrRd"](0.08 + 0.6 * position)
    return f"background-color: rgb({r * 255:.0f}, {g * 255:.0f}, {b * 255:.0f}); color: #111;"


def _noise_section(tables: list[tuple[runs.Run, runs.NoiseTable]]) -> dict[str, Any] | None:
    """Table 1 of the report: one row per noise, the runs side by side; and the example grids.
    `tables`: each run with its noise table. Rows are matched across runs by their noise spec
    (`gaussian:sigma=0.1,clip=false`), never by their label: two noises may share a label, and
    a plugin may label its noise differently from one version to the next."""
    if not tables:
        return None
    labels: dict[str, str] = {}  # spec -> the label it is shown with (the first run's)
    values = []
    for _, table in tables:
        values.append({row.spec: row.mse for row in table.rows})
        for row in table.rows:
            labels.setdefault(row.spec, str(row.label if row.label is not None else row.spec))
    columns = [{"label": _run_label(run), "ed": run.ed, "name": run.name,
                "images": table.test_images, "seed": table.seed} for run, table in tables]
    shared = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    rows = []
    for spec, label in labels.items():
        mses = [v.get(spec) for v in values]
        finite = [m for m in mses if isinstance(m, (int, float)) and math.isfinite(m)]
        lowest = min(finite) if len(finite) > 1 else None
        rows.append({"label": f"{label} ({spec})" if label in shared else label, "spec": spec,
                     "cells": [{"mse": m, "lowest": lowest is not None and m == lowest}
                               for m in mses]})
    examples = [{"label": _run_label(run), "name": run.name, "ed": run.ed,
                 **image_file(run.path / Path(table.examples).name)}
                for run, table in tables if table.examples]
    return {"columns": columns, "rows": rows, "examples": examples}


def _latent_section(summaries: list[tuple[runs.Run, runs.EmbeddingSummary]]
                    ) -> list[dict[str, Any]]:
    """The latent-space entries: each run with its `embedding.json`."""
    entries = []
    for run, summary in summaries:
        plots = summary.plots or {summary.method or "pca": summary.plot}
        images = [{"method": method, **image_file(run.path / Path(str(name)).name)}
                  for method, name in plots.items() if name]
        flat = (summary.projection_scores or {}).get("pca") or {}
        entries.append({
            "label": _run_label(run), "name": run.name, "ed": run.ed,
            "explained_variance": summary.explained_variance or [],
            "silhouette": summary.silhouette,
            "knn_accuracy": summary.knn_accuracy,
            "silhouette_2d": flat.get("silhouette"),
            "knn_accuracy_2d": flat.get("knn_accuracy"),
            "knn_neighbors": summary.knn_neighbors,
            "knn_folds": summary.knn_folds,
            "images_count": summary.images,
            "images": images,
            "dataset": summary.dataset or run.config.get("dataset"),
            "classes": [str(c) for c in summary.classes or []],
            "note": summary.note,
            "other_data": _other_data(summary.dataset_sha256, run),
        })
    return entries


def _other_data(sha256: Any, run: runs.Run) -> bool:
    """Whether a result was computed on other data than its run was trained on."""
    trained = run.metrics.get("dataset_sha256")
    return bool(sha256 and trained and sha256 != trained)


def _best_of(entries: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    scored = [e for e in entries if isinstance(e.get(key), (int, float))]
    return max(scored, key=lambda e: e[key]) if len(scored) > 1 else None


@dataclass
class _RunFiles:
    """A run and what the other commands left in its folder, each file checked."""

    run: runs.Run
    history: list[dict[str, Any]]
    noise: runs.NoiseTable | None  # noise_table.json (aetool corrupt)
    latent: runs.EmbeddingSummary | None  # embedding.json (aetool embed)


def _readable(found: list[runs.Run], unreadable: list[runs.Unreadable]) -> list[_RunFiles]:
    """The runs whose history, noise table and embedding can be read too; a run with a
    damaged one joins `unreadable` with the sentence naming the file."""
    kept = []
    for run in found:
        try:
            noise, latent = run.path / runs.NOISE_TABLE, run.path / runs.EMBEDDING_JSON
            kept.append(_RunFiles(run, run.history(),
                                  runs.NoiseTable.read(noise) if noise.is_file() else None,
                                  runs.EmbeddingSummary.read(latent) if latent.is_file()
                                  else None))
        except AetoolError as exc:
            unreadable.append(runs.Unreadable(run.name, str(exc)))
    return kept


def _test_mse_rows(finished: list[runs.Run]) -> list[dict[str, Any]]:
    """The test MSE of each finished run, with a bar relative to the largest; a run whose
    test MSE is not a number (it diverged) shows "–" and no bar."""
    top_mse = max((r.metrics["test_mse"] for r in finished if _finite(r.metrics["test_mse"])),
                  default=0) or 1
    return [{
        "label": _run_label(r), "name": r.name, "ed": r.ed, "test_mse": r.metrics["test_mse"],
        "best_val_loss": r.metrics.get("best_val_loss"), "best_epoch": r.metrics.get("best_epoch"),
        "epochs": r.metrics.get("epochs"), "test_images": r.metrics.get("test_images"),
        "bar": max(0.0, min(100.0, 100 * r.metrics["test_mse"] / top_mse))
        if _finite(r.metrics["test_mse"]) else 0.0,
    } for r in finished]


def collect_report(root: Path | str | None = None) -> dict[str, Any]:
    """Everything the page shows, as plain data; a section's key is None/empty when its data
    is not in the workspace. An empty workspace is an error."""
    root = runs.workspace_root(root)
    unreadable: list[runs.Unreadable] = []
    files = _readable(runs.list_runs(root, finished_only=False, unreadable=unreadable),
                      unreadable)
    found = [f.run for f in files]
    search, search_incomplete = _search_section(_search_results(root, unreadable))
    if not found and not search and not unreadable:
        raise AetoolError(
            f"Nothing to report in {root}: it holds no runs and no search results; train one "
            "with `aetool fit --ed 4` or point --runs / AETOOL_RUNS at your workspace."
        )
    histories = [(_run_label(f.run), h, f.run.metrics.get("best_epoch")) for f in files
                 if (h := [x for x in f.history if "epoch" in x])]
    finished = [r for r in found if isinstance(r.metrics.get("test_mse"), (int, float))]
    test_mse = _test_mse_rows(finished)
    environment = [{"name": r.name, "ed": r.ed,
                    **{k: r.metrics["environment"].get(k) for k in ENVIRONMENT_KEYS},
                    "dataset": r.config.get("dataset"),
                    "dataset_sha256": r.metrics.get("dataset_sha256")}
                   for r in found if isinstance(r.metrics.get("environment"), dict)]
    latent = _latent_section([(f.run, f.latent) for f in files if f.latent is not None])
    budget = budget_points([r for r in finished if _finite(r.metrics["test_mse"])])
    data = {
        "root": str(root),
        "runs": [_settings_row(r) for r in found],
        "unreadable": [asdict(u) for u in unreadable],
        "loss_plot": loss_plot(histories) if histories else None,
        "loss_runs": [label for label, _, _ in histories],
        "search": search,
        "search_incomplete": search_incomplete,
        "test_mse": test_mse,
        "noise": _noise_section([(f.run, f.noise) for f in files if f.noise is not None]),
        "latent": latent,
        "method_names": {"pca": "PCA", "tsne": "t-SNE"},
        "latent_best_knn": _best_of(latent, "knn_accuracy"),
        "latent_best_silhouette": _best_of(latent, "silhouette"),
        "latent_best_knn_2d": _best_of(latent, "knn_accuracy_2d"),
        "environment": environment,
        "time_budget": {"points": budget, "plot": png_data_uri(budget_plot(budget, PLOT_DPI))}
        if budget else None,
    }
    present = {
        "runs": bool(data["runs"] or unreadable), "loss": bool(data["loss_plot"]),
        "search": bool(search),
        "test-mse": bool(test_mse), "time-budget": bool(budget),
        "noise": bool(data["noise"]), "latent": bool(latent),
        "environment": bool(environment),
    }
    data["sections"] = [{"id": key, "title": SECTIONS[key]} for key in SECTIONS if present[key]]
    return data


# --------------------------------------------------------------------------- rendering


def render_report(root: Path | str | None = None, data: dict[str, Any] | None = None) -> str:
    """The report page as an HTML string."""
    data = data if data is not None else collect_report(root)
    template = template_environment().get_template(TEMPLATE)
    return template.render(
        **data,
        title="aetool report",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        renderer={"aetool": __version__, "torch": torch.__version__,
                  "python": platform.python_version()},
    )


def write_report(
    root: Path | str | None = None, output: Path | str | None = None
) -> ReportResult:
    """Render the workspace's report and write it atomically (default `ROOT/report.html`)."""
    root = runs.workspace_root(root)
    output = Path(output) if output is not None else runs.Workspace(root).report
    if output.is_dir():
        raise AetoolError(f"--output {output} is a folder; name the HTML file to write.")
    data = collect_report(root)
    html = render_report(root, data).encode("utf-8")
    missing = [p for p in reversed(output.parents) if not p.exists()]
    try:
        write_atomic(output, html)
    except OSError as exc:
        raise AetoolError(f"Cannot write the report to {output} ({exc.strerror}).") from None
    return ReportResult(output, [s["id"] for s in data["sections"]], len(html),
                        missing[0] if missing else None, data["unreadable"])


def __getattr__(name: str) -> Any:
    """The file name this module had (deprecated: it is the workspace's)."""
    return runs.old_file_name(__name__, name, ("REPORT_FILE",))
