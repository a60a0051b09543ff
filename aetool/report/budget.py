"""Test MSE against training time: the runs trained with `fit --time`, per ED, beside the seed
report's checkpoints (a dashed line each). Used by the HTML report's "time budget" section and
by `benchmarks/time_budget.py` for the README's figure."""

from __future__ import annotations

import io
from typing import Any

# The seed report's checkpoints on the MNIST test set (README, "Accuracy against the report").
REPORT_CHECKPOINT_MSE = {4: 0.02696, 8: 0.01608, 16: 0.00962, 32: 0.00813}


def budget_points(found: list[Any]) -> list[dict[str, Any]]:
    """One point per finished run that trained to a time budget: its ED, data set, budget
    (minutes), epochs and test MSE, sorted by ED and budget."""
    points = []
    for run in found:
        budget = run.config.get("time_budget")
        mse = run.metrics.get("test_mse")
        if isinstance(budget, (int, float)) and isinstance(mse, (int, float)):
            points.append({"name": run.name, "ed": run.ed, "minutes": budget / 60,
                           "epochs": run.metrics.get("epochs"), "test_mse": mse,
                           "dataset": run.config.get("dataset")})
    return sorted(points, key=lambda p: (p["ed"], p["minutes"]))


def budget_plot(points: list[dict[str, Any]], dpi: int = 90) -> bytes:
    """Test MSE against the time budget in minutes, one line per ED, with the
    report's checkpoint for that ED as a dashed line (MNIST runs only), as PNG bytes. Drawn
    on an Agg canvas without pyplot."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(6.4, 3.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = colormaps["tab10"]
    for i, ed in enumerate(sorted({p["ed"] for p in points})):
        mine = [p for p in points if p["ed"] == ed]
        color = colors(i % 10)
        ax.plot([p["minutes"] for p in mine], [p["test_mse"] for p in mine], marker="o",
                color=color, label=f"ED={ed}, fit --time")
        reference = REPORT_CHECKPOINT_MSE.get(ed)
        if reference and all(p.get("dataset") in (None, "mnist") for p in mine):
            ax.axhline(reference, color=color, linestyle="--", linewidth=1,
                       label=f"ED={ed}, the report's checkpoint ({reference:.5f})")
    ax.set_xscale("log")
    minutes = sorted({p["minutes"] for p in points})
    ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("time budget (minutes, log scale)")
    ax.set_ylabel("test MSE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
