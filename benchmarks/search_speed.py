"""How long one epoch of a grid search takes: K models one after another, or together in vmap.

The models are the report's grid for one ED: 9 (lr, weight decay) settings x 3 folds = 27,
each training on its fold's share of the search images and validating on the rest, exactly
as `aetool search` trains them. It prints seconds per epoch (training and validation) for:
one model alone, the K models sequentially (`aetool.train.batched.train_sequential`, fit's loop),
and the K models in vmap (`aetool.train.batched.train_batched`) in groups of each --parallel size.

    python benchmarks/search_speed.py                          # best device, all 50,000 images
    python benchmarks/search_speed.py --device cpu --images 6000 --threads 1

On a CPU the full set takes minutes per configuration; --images uses the first N images
of the search's training split (the report's 50,000) and says so in its output. Each run
also writes its numbers, with the conditions they were measured under, to
`benchmarks/results/search_speed-<device>-<date>.json` (`--results DIR` elsewhere,
`--results ''` not at all).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from aetool.devices import device_description, resolve_device, synchronize
from aetool.search.grid import SearchConfig, fold_indices, search_images
from aetool.train.batched import TrainJob, train_batched, train_sequential

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS_DIR, add_busy_option, check_idle, save_result  # noqa: E402 (sibling)


def _jobs(config: SearchConfig, images: torch.Tensor, ed: int) -> list[TrainJob]:
    folds = fold_indices(images.shape[0], config.folds, config.seed)
    points = [p for p in config.grid() if p.ed == ed]
    return [TrainJob(config.fit_config(p, str(images.device)), tr, va)
            for p in points for tr, va in folds]


def _seconds_per_epoch(train, jobs, images, epochs: int) -> float:
    train(jobs[:1], images, 1)  # warm-up: kernels, allocator, first-call costs
    synchronize(images.device)
    tic = time.perf_counter()
    train(jobs, images, epochs)
    synchronize(images.device)
    return (time.perf_counter() - tic) / epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ed", type=int, default=4)
    parser.add_argument("--images", type=int, default=None,
                        help="use the first N search images (default: all 50,000)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=10_000,
                        help="fit's validation images, left out (default 10,000)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement")
    parser.add_argument("--parallel", type=int, nargs="*", default=None,
                        help="vmap group sizes to time (default: all K models at once)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-sequential", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    parser.add_argument("--results", default=str(RESULTS_DIR),
                        help="folder for the results file ('' for none)")
    add_busy_option(parser)
    args = parser.parse_args(argv)
    check_idle(args.allow_busy)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    config = SearchConfig(eds=[args.ed], batch_size=args.batch_size, limit=args.images,
                          val_size=args.val_size)
    images, _ = search_images(config, device=device)
    jobs = _jobs(config, images, args.ed)
    k = len(jobs)
    subset = f"the first {args.images}" if args.images else "all"
    print(f"device: {device_description(device)}; torch {torch.__version__}; "
          f"{images.shape[0]} search images ({subset}), {config.folds} folds, "
          f"batch {args.batch_size}, ED {args.ed}, K = {k} models")

    numbers: dict[str, float] = {}
    numbers["single"] = _seconds_per_epoch(train_sequential, jobs[:1], images, args.epochs)
    print(f"one model:              {numbers['single']:8.3f} s per epoch")
    if not args.skip_sequential:
        numbers["sequential"] = _seconds_per_epoch(train_sequential, jobs, images, args.epochs)
        print(f"{k} models sequentially: {numbers['sequential']:8.3f} s per epoch")
    for group in args.parallel or [k]:
        def grouped(js, ims, epochs, group=group):
            for start in range(0, len(js), group):
                train_batched(js[start : start + group], ims, epochs)

        key = f"vmap_{group}"
        numbers[key] = _seconds_per_epoch(grouped, jobs, images, args.epochs)
        line = f"{k} models in vmap, groups of {group}: {numbers[key]:8.3f} s per epoch"
        if "sequential" in numbers:
            line += f"  (speed-up {numbers['sequential'] / numbers[key]:.2f}x over sequential)"
        line += f"  ({numbers[key] / numbers['single']:.1f}x one model)"
        print(line)
    summary = {"device": device_description(device), "images": int(images.shape[0]),
               "models": k, "ed": args.ed, "batch_size": args.batch_size,
               "epochs": args.epochs, "seconds_per_epoch": numbers}
    save_result("search_speed", "search_speed.py", summary, args.results, device, argv,
                tag=device.type)
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
