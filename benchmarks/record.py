"""Where a benchmark's numbers came from: one JSON file per run in `benchmarks/results/`.

Each benchmark script calls `save_result(kind, script, results, args.results, device, argv)`:
the file holds the results and the conditions they were measured under (command line, UTC
date, device, CPU model and flags from /proc/cpuinfo, thread counts, load average, versions),
so that every figure the README quotes can be traced to, and checked against, a committed
file (tests/docs/test_readme_figures.py does that).

Speed benchmarks call `add_busy_option(parser)` and then `check_idle(args.allow_busy)` first:
on a busy machine (1-minute load average at least `BUSY_LOAD` at the start) they refuse to
run (exit 2) unless `--allow-busy`, and then the result file says `"busy": true`. Every
result file records the load average at the start (when `check_idle` ran) and at the end.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUSY_LOAD = 0.5  # a 1-minute load average from here on is a busy machine: timings mislead
# What `check_idle` found at the start of this run (the result file records it).
_START: dict = {}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def add_busy_option(parser) -> None:
    parser.add_argument("--allow-busy", action="store_true",
                        help=f"run even when the 1-minute load average is {BUSY_LOAD} or more "
                        "(the result file is then marked busy)")


def check_idle(allow_busy: bool) -> bool:
    """Record the load average at the start; refuse (exit 2, one sentence) on a busy machine
    unless `allow_busy`. Returns whether the machine is busy."""
    load = load_average()
    busy = load is not None and load[0] >= BUSY_LOAD
    _START.clear()
    _START.update(load_average_at_start=load, busy=busy)
    if busy and not allow_busy:
        print(f"The machine is busy (1-minute load average {load[0]}, at least {BUSY_LOAD}): "
              "timings would mislead; run on an idle machine, or pass --allow-busy to mark "
              "the result busy.", file=sys.stderr)
        raise SystemExit(2)
    return busy


def cpu_info() -> dict:
    """CPU model, logical CPUs and flags (from /proc/cpuinfo where there is one)."""
    info: dict = {"model": platform.processor() or platform.machine(),
                  "logical_cpus": os.cpu_count(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
            info["model"] = value.strip()
        elif key in ("flags", "Features") and not info["flags"]:
            info["flags"] = value.split()
    return info


def environment(script: str, device=None, argv: list[str] | None = None) -> dict:
    """The conditions of a measurement."""
    import torch

    import aetool
    from aetool.devices import device_description

    load = load_average()
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["python", f"benchmarks/{script}",
                               *(sys.argv[1:] if argv is None else argv)]),
        "device": None if device is None else str(device),
        "device_name": None if device is None else device_description(device),
        "cpu": cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **_START,
        "load_average_at_end": load,
        "versions": {"aetool": getattr(aetool, "__version__", None), "torch": torch.__version__,
                     "python": platform.python_version(), "platform": platform.platform()},
    }
    if device is not None and torch.device(device).type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def save_result(kind: str, script: str, results, directory: str | None, device=None,
                argv: list[str] | None = None, tag: str = "") -> Path | None:
    """Write `{"kind", "environment", "results"}` to DIRECTORY/KIND[-TAG]-DATE.json and return
    its path; nothing when `directory` is empty."""
    if not directory:
        return None
    env = environment(script, device, argv)
    _START.clear()  # a later run in this process checks its own start
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = env["date"].replace("-", "").replace(":", "")
    name = f"{kind}{'-' + tag if tag else ''}-{stamp}"
    text = json.dumps({"kind": kind, "environment": env, "results": results}, indent=2) + "\n"
    for n in range(1, 1000):  # two runs finishing in the same second keep a file each
        path = folder / (f"{name}.json" if n == 1 else f"{name}-{n}.json")
        try:
            with open(path, "x") as out:
                out.write(text)
            break
        except FileExistsError:
            continue
    print(f"results written to {path}", file=sys.stderr)
    return path
