"""Test MSE against training time: `aetool fit --ed 4 --time T` for several budgets.

Each budget runs as its own `aetool fit` process (so start-up is measured too), one after the
other, in a scratch workspace. For each it records the wall time of the whole command, the
epochs `--time` chose, the measured epoch estimate, the training seconds and the test MSE,
beside the report's checkpoint for the same ED (the line the curve is compared with), and
draws that curve into a PNG beside the JSON file:

    python benchmarks/time_budget.py --times 2m 5m 15m --threads 1 --results benchmarks/results

With `--collect-wall`, nothing is trained: the rows are read from the run folders an earlier
call left in `--workspace`, with the wall times it printed (its file could not be saved).

With `--merge`, nothing is trained either: the rows of earlier result files (budgets measured
at different times) are put together into one curve, in budget order, each row naming the file
it came from with that file's date, command and load average:

    python benchmarks/time_budget.py --merge benchmarks/results/time_budget-A.json \
        benchmarks/results/time_budget-B.json --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from record import save_result

from aetool.report.budget import REPORT_CHECKPOINT_MSE, budget_plot


def one_budget(budget: str, ed: int, threads: int, workspace: Path) -> dict:
    cmd = [sys.executable, "-m", "aetool", "fit", "--ed", str(ed), "--time", budget,
           "--threads", str(threads), "--device", "cpu", "--runs", str(workspace),
           "--name", run_name(ed, budget), "--force", "--json", "--log-every", "60"]
    tic = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return budget_row(budget, ed, workspace, wall, done.stderr)


def run_name(ed: int, budget: str) -> str:
    return f"ed{ed}-time-{budget}"


def budget_row(budget: str, ed: int, workspace: Path, wall: float, stderr: str | None) -> dict:
    """One budget's figures, read from its run folder."""
    folder = workspace / run_name(ed, budget)
    metrics = json.loads((folder / "metrics.json").read_text())
    history = json.loads((folder / "history.json").read_text())
    plan = metrics["time_budget"]
    return {
        "budget": budget, "budget_seconds": plan["budget"], "wall_seconds": round(wall, 1),
        "within_budget": wall <= plan["budget"], "max_epochs": plan["max_epochs"],
        "epochs": metrics["epochs"], "epoch_seconds_estimate": round(plan["epoch_seconds"], 3),
        "seconds_per_epoch": round(metrics["seconds_per_epoch"], 3),
        "epoch_seconds": [round(r["seconds"], 2) for r in history],
        "measure_seconds": round(plan["measure_seconds"], 2),
        "train_seconds": round(metrics["train_seconds"], 1), "test_mse": metrics["test_mse"],
        "best_epoch": metrics["best_epoch"], "threads": metrics["environment"]["threads"],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "stderr": stderr,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", nargs="+", default=["2m", "5m", "15m"])
    parser.add_argument("--ed", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--results", default=None, help="folder for the JSON result file")
    parser.add_argument("--collect-wall", nargs="+", type=float, default=None,
                        help="do not train: read the runs already in --workspace, with these "
                        "wall times (seconds, one per --times) as an earlier run printed them")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="do not train: one curve from the rows of these result files")
    args = parser.parse_args(argv)
    if args.merge:
        ed, rows = merged_rows(args.merge)
        save_curve(rows, ed, args.results, argv, merged=True)
        return
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="aetool-time-"))
    rows = []
    for i, budget in enumerate(args.times):
        if args.collect_wall:
            row = budget_row(budget, args.ed, workspace, args.collect_wall[i], None)
        else:
            row = one_budget(budget, args.ed, args.threads, workspace)
        rows.append(row)
        print(f"--time {budget}: {row['epochs']} epochs, wall {row['wall_seconds']} s, "
              f"test MSE {row['test_mse']:.5f}", flush=True)
    save_curve(rows, args.ed, args.results, argv, collected=bool(args.collect_wall))


def save_curve(rows: list[dict], ed: int, results_dir: str | None, argv: list[str] | None, *,
               collected: bool = False, merged: bool = False) -> None:
    """The result file, and the README's figure beside it."""
    results = {"ed": ed, "report_test_mse": REPORT_CHECKPOINT_MSE.get(ed), "rows": rows,
               "collected_from_workspace": collected, "merged": merged}
    path = save_result("time_budget", "time_budget.py", results, results_dir,
                       torch.device("cpu"), argv)
    if path is not None:
        path.with_suffix(".png").write_bytes(plot(rows, ed))


def merged_rows(files: list[Path]) -> tuple[int, list[dict]]:
    """The ED the files measured and their rows, in budget order, each saying where it came
    from; files of different EDs, or measuring a budget twice, are refused."""
    rows = []
    eds = set()
    for file in files:
        result = json.loads(file.read_text())
        eds.add(result["results"]["ed"])
        env = result["environment"]
        source = {"file": file.name, "date": env["date"], "command": env["command"],
                  "load_average_at_end": env.get("load_average_at_end")}
        for row in result["results"]["rows"]:
            rows.append({**row, "source": row.get("source", source)})
    budgets = [row["budget_seconds"] for row in rows]
    if len(set(budgets)) != len(budgets):
        raise SystemExit(f"the files measure a budget twice: {sorted(budgets)}")
    if len(eds) != 1:
        raise SystemExit(f"the files measure different EDs: {sorted(eds)}")
    return eds.pop(), sorted(rows, key=lambda row: row["budget_seconds"])


def plot(rows: list[dict], ed: int) -> bytes:
    """Test MSE against the budget (minutes), with the report's checkpoint, as PNG bytes."""
    return budget_plot([{"ed": ed, "minutes": r["budget_seconds"] / 60,
                         "test_mse": r["test_mse"], "dataset": "mnist"} for r in rows], dpi=100)


if __name__ == "__main__":
    main()
