"""Seconds per training epoch: a plain torchvision loop against aetool, in one process.

The plain loop is what a course notebook does: `torchvision.datasets.MNIST` with `ToTensor`,
a shuffling `DataLoader` (num_workers 0 on the CPU, 4 on CUDA unless told otherwise), and the
usual forward / backward / Adam step. aetool trains the same model (`aetool.models.Autoencoder`),
with the same batch size, on the same 60,000 training images, through
`aetool.train.fast.make_train_epoch` in each requested mode; images sit on the device as one uint8
tensor. Each contender runs one warm-up epoch (compilation and graph capture happen there),
then the timed epochs run interleaved, so that a machine that gets busier or quieter affects
all of them alike; the median and the fastest epoch are reported (on a shared machine the
fastest is the better estimate of the unloaded time), with the load average around them.
Optionally `aetool.train.loop.fit` itself is timed too (50,000 training + 10,000 validation
images per epoch, as a real run does).

    python benchmarks/speed.py                     # the best device, modes auto and eager
    python benchmarks/speed.py --device cpu --epochs 5 --modes auto,compile,eager
    python benchmarks/speed.py --json > speed.json

Each run also writes its results, with the conditions they were measured under (command line,
date, device, CPU model and flags, threads, load, versions), to
`benchmarks/results/speed-<device>-batch<B>-<date>.json` (`--results DIR` elsewhere,
`--results ''` not at all).

This is a measurement, not a test: nothing fails when the ratio is low.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from aetool.data import load_dataset, raw_dir, split_train_val
from aetool.devices import device_description, resolve_device, synchronize
from aetool.errors import AetoolError
from aetool.models import Autoencoder
from aetool.train import fast
from aetool.train import loop as training

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS_DIR, add_busy_option, check_idle, save_result  # noqa: E402 (sibling)

LR, WEIGHT_DECAY = 1e-2, 1e-5


def plain_loop(
    root: Path, device: torch.device, ed: int, batch_size: int, workers: int, seed: int
) -> Callable[[], None]:
    """One epoch of the textbook loop per call."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)
    model = Autoencoder(ed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def epoch() -> None:
        model.train()
        for images, _ in loader:
            images = images.to(device, non_blocking=True)
            loss = F.mse_loss(model(images), images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return epoch


def aetool_loop(
    images: torch.Tensor, device: torch.device, ed: int, batch_size: int, mode: str, seed: int
) -> tuple[Callable[[], None], str]:
    """One epoch of aetool's training step in `mode` per call, and the mode it resolved to."""
    torch.manual_seed(seed)
    model = Autoencoder(ed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    train_epoch = fast.make_train_epoch(model, optimizer, device, mode)
    shuffle = torch.Generator().manual_seed(seed)

    def epoch() -> None:
        train_epoch(model, optimizer, images, batch_size, shuffle)

    return epoch, train_epoch.mode


def timed(epoch: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    tic = time.perf_counter()
    epoch()
    synchronize(device)
    return time.perf_counter() - tic


def fit_seconds_per_epoch(data, device: torch.device, ed: int, batch_size: int, epochs: int):
    """Median and fastest seconds per epoch of `training.fit` (first epoch excluded), and the
    first epoch's."""
    split = split_train_val(data, 10_000, 0)
    config = training.preset_config(
        "report", ed=ed, batch_size=batch_size, max_epochs=epochs + 1, patience=0,
        device=str(device),
    )
    result = training.fit(config, None, split=split)
    seconds = [r.seconds for r in result.history]
    return statistics.median(seconds[1:]), min(seconds[1:]), seconds[0]


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per contender")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--ed", type=int, default=4)
    parser.add_argument(
        "--modes", default="auto,eager", help=f"aetool modes, comma-separated: {fast.MODES}"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (default 0 CPU, 4 CUDA)"
    )
    parser.add_argument("--fit", action="store_true", help="also time aetool.train.loop.fit")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--data-dir", default=None, help="data root (default: aetool's cache)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--results", default=str(RESULTS_DIR),
                        help="folder for the results file ('' for none)")
    add_busy_option(parser)
    args = parser.parse_args(argv)
    check_idle(args.allow_busy)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    data = load_dataset("mnist", args.data_dir, device)
    root = raw_dir("mnist", args.data_dir).parent.parent
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print

    contenders: dict[str, Callable[[], None]] = {
        f"plain (num_workers={workers})": plain_loop(
            root, device, args.ed, args.batch_size, workers, 0
        )
    }
    resolved = {}
    for mode in modes:
        epoch, concrete = aetool_loop(data.train_images, device, args.ed, args.batch_size, mode, 0)
        name = f"aetool {mode}" + (f" ({concrete})" if concrete != mode else "")
        contenders[name] = epoch
        resolved[name] = concrete

    log(f"device: {device} ({device_description(device)}), torch {torch.__version__}")
    log(f"batch {args.batch_size}, ED {args.ed}, 60000 training images per epoch")
    first = {}
    for name, epoch in contenders.items():
        first[name] = timed(epoch, device)
        log(f"  warm-up epoch {name}: {first[name]:.3f} s")
    load_before = _load_average()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.epochs):
        for name, epoch in contenders.items():
            samples[name].append(timed(epoch, device))
    load_after = _load_average()
    medians = {name: statistics.median(s) for name, s in samples.items()}
    plain_name = next(iter(contenders))
    plain, plain_best = medians[plain_name], min(samples[plain_name])

    steps = -(-data.train_images.shape[0] // args.batch_size)
    rows = []
    for name in contenders:
        rows.append({
            "steps_per_epoch": steps,
            "ms_per_step": 1000 * medians[name] / steps,
            "name": name,
            "mode": resolved.get(name),
            "seconds_per_epoch": medians[name],
            "fastest_epoch_seconds": min(samples[name]),
            "first_epoch_seconds": first[name],
            "samples": samples[name],
            "speedup_vs_plain": plain / medians[name],
            "speedup_vs_plain_fastest": plain_best / min(samples[name]),
        })
    fit_row = None
    if args.fit:
        per_epoch, fastest, first_fit = fit_seconds_per_epoch(
            data, device, args.ed, args.batch_size, args.epochs
        )
        fit_row = {
            "name": "aetool fit (50k train + 10k val)",
            "seconds_per_epoch": per_epoch,
            "fastest_epoch_seconds": fastest,
            "first_epoch_seconds": first_fit,
            "speedup_vs_plain": plain / per_epoch,
            "speedup_vs_plain_fastest": plain_best / fastest,
        }
        rows.append(fit_row)

    log(f"load average {load_before} before, {load_after} after the timed epochs")
    log(f"\n{'contender':36s} {'median s':>9s} {'fastest s':>9s} {'first s':>8s} "
        f"{'plain/this (median)':>20s} {'(fastest)':>9s}")
    for row in rows:
        log(
            f"{row['name']:36s} {row['seconds_per_epoch']:9.3f} "
            f"{row['fastest_epoch_seconds']:9.3f} {row['first_epoch_seconds']:8.2f} "
            f"{row['speedup_vs_plain']:19.2f}x {row['speedup_vs_plain_fastest']:8.2f}x"
        )
    summary = {
        "device": str(device),
        "device_name": device_description(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch_size": args.batch_size,
        "ed": args.ed,
        "workers": workers,
        "epochs": args.epochs,
        "load_average": [load_before, load_after],
        "results": rows,
    }
    save_result("speed", "speed.py", summary, args.results, device, argv,
                tag=f"{device.type}-batch{args.batch_size}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AetoolError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
