"""Seconds per training epoch of each registered model, side by side in one process.

The epochs of the models alternate (course, wide, course, wide, ...), so that whatever else
the machine is doing slows them alike, and the table reports each model's median epoch and
its ratio to the first model's. Same data (MNIST's training split, 50,000 images), batch size,
mode and threads for every model.

    python benchmarks/model_speed.py --model course --model wide --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS_DIR, add_busy_option, check_idle, save_result  # noqa: E402

from aetool.data import load_dataset, split_train_val  # noqa: E402
from aetool.devices import resolve_device, synchronize  # noqa: E402
from aetool.models import build_model, count_parameters, parse_model_spec  # noqa: E402
from aetool.train.fast import make_train_epoch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", dest="models",
                        help="a model spec; repeat for several (default: course and wide)")
    parser.add_argument("--ed", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None, help="data root (default: aetool's cache)")
    parser.add_argument("--val-size", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="'' for no results file")
    add_busy_option(parser)
    args = parser.parse_args(argv)
    check_idle(args.allow_busy)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    split = split_train_val(load_dataset("mnist", args.data_dir, device), args.val_size, 0)
    specs = [parse_model_spec(m).spec for m in args.models or ["course", "wide"]]
    runs = []
    for spec in specs:
        torch.manual_seed(0)
        model = build_model(spec, args.ed, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        runs.append((spec, model, optimizer, make_train_epoch(model, optimizer, device,
                                                              args.mode)))
    seconds: dict[str, list[float]] = {spec: [] for spec in specs}
    for _ in range(args.epochs):
        for spec, model, optimizer, run_epoch in runs:
            shuffle = torch.Generator().manual_seed(0)
            synchronize(device)
            tic = time.perf_counter()
            run_epoch(model, optimizer, split.train, args.batch_size, shuffle)
            synchronize(device)
            seconds[spec].append(time.perf_counter() - tic)
    first = statistics.median(seconds[specs[0]])
    rows = [{"model": spec, "parameters": count_parameters(model),
             "mode": run_epoch.mode, "seconds": seconds[spec],
             "median_seconds": statistics.median(seconds[spec]),
             "ratio": statistics.median(seconds[spec]) / first}
            for spec, model, _, run_epoch in runs]
    results = {"ed": args.ed, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
               "device": str(device), "train_images": int(split.train.shape[0]), "rows": rows}
    out = sys.stderr if args.json else sys.stdout
    for row in rows:
        print(f"{row['model']:40} {row['parameters']:>10,} weights  {row['mode']:6} "
              f"{row['median_seconds']:8.2f} s/epoch  x{row['ratio']:.1f}", file=out)
    save_result("model_speed", "model_speed.py", results, args.results, device, argv)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
