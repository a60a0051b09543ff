"""Several search workers on one machine against one worker with all the threads.

Runs the same small grid with `aetool search --workers W --threads T` for each (W, T) given,
alternating between them `--repeat` times, each in a fresh workspace (so every run trains the
whole grid), and records the wall time of each command:

    python benchmarks/search_workers.py --configs 2x1 1x2 --repeat 2 --results benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch
from record import add_busy_option, check_idle, save_result

GRID = ["--ed", "4", "--lr", "1e-2", "--lr", "1e-3", "--weight-decay", "1e-5",
        "--weight-decay", "1e-4", "--folds", "3", "--epochs", "5", "--limit", "6000",
        "--device", "cpu", "--parallel", "1", "--quiet"]


def one_search(workers: int, threads: int) -> float:
    with tempfile.TemporaryDirectory(prefix="aetool-workers-") as workspace:
        cmd = [sys.executable, "-m", "aetool", "search", *GRID, "--workers", str(workers),
               "--threads", str(threads), "--runs", workspace]
        tic = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["2x1", "1x2"],
                        help="WORKERSxTHREADS each")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--results", default=None, help="folder for the JSON result file")
    add_busy_option(parser)
    args = parser.parse_args()
    check_idle(args.allow_busy)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs]
    runs: dict[str, list[float]] = {c: [] for c in args.configs}
    for _ in range(args.repeat):
        for label, (workers, threads) in zip(args.configs, configs, strict=True):
            seconds = one_search(workers, threads)
            runs[label].append(round(seconds, 1))
            print(f"--workers {workers} --threads {threads}: {seconds:.1f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    results = {"grid": GRID, "models": 4 * 3, "epochs": 5, "seconds": runs,
               "best": {k: min(v) for k, v in runs.items()}}
    save_result("search_workers", "search_workers.py", results, args.results,
                torch.device("cpu"))


if __name__ == "__main__":
    main()
