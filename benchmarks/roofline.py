"""How far each built-in model's training epoch is from the device's matrix-multiply limit.

For each model (course at batch 1000, wide at batch 128, ED 4) and precision (32, bf16-mixed):
- the FLOPs of one training step, forward + backward (`torch.utils.flop_counter`), under the
  precision's autocast;
- the GEMM rate in that precision's dtype on the same threads: a 2048^3 matmul, best of a few;
- the floor for an epoch of 60,000 images at that rate (FLOPs per image x 60,000 / rate);
- aetool's measured epoch: `aetool.train.fast.make_train_epoch` in `tuned` mode on random uint8
  images of MNIST's shape (a warm-up epoch, then one timed epoch, scaled to 60,000 images);
- their ratio (measured / floor).

    python benchmarks/roofline.py --device cpu --threads 1      # on an idle machine
    python benchmarks/roofline.py --device cuda

It refuses to run on a busy machine (1-minute load average 0.5 or more) unless `--allow-busy`,
which marks the result busy. Results go to `benchmarks/results/roofline-<device>-<date>.json`
(`--results DIR` elsewhere, `--results ''` not at all). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from aetool.devices import device_description, resolve_device, synchronize
from aetool.models import build_model
from aetool.train import fast
from aetool.train.fast.precision import Precision, native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS_DIR, add_busy_option, check_idle, save_result  # noqa: E402 (sibling)

BATCH = {"course": 1000, "wide": 128}  # each model's batch size (its recipe's)
EPOCH_IMAGES = 60_000  # MNIST's training split
DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def step_flops(model_name: str, ed: int, batch: int, precision: Precision,
               device: torch.device) -> int:
    """FLOPs of one training step (forward, loss and backward) at batch `batch`."""
    torch.manual_seed(0)
    model = build_model(model_name, ed, device)
    images = torch.rand(batch, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as counter:
        with precision.autocast():
            loss = torch.nn.functional.mse_loss(model(images), images)
        loss.backward()
    return int(counter.get_total_flops())


def gemm_rate(size: int, dtype: torch.dtype, device: torch.device, reps: int) -> float:
    """FLOP/s of a size^3 matmul in `dtype`, the best of `reps` (after one warm-up)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = math.inf
    for _ in range(reps + 1):
        synchronize(device)
        tic = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best


def measured_epoch(model_name: str, ed: int, batch: int, precision: str, device: torch.device,
                   images: int) -> float:
    """Seconds of one `tuned` epoch over `images` random images, scaled to 60,000 images."""
    torch.manual_seed(0)
    model = build_model(model_name, ed, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    run_epoch = fast.make_train_epoch(model, optimizer, device, "tuned", precision)
    data = torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).to(device)
    shuffle = torch.Generator().manual_seed(0)
    run_epoch(model, optimizer, data[: min(images, 2 * batch)], batch, shuffle)  # warm-up
    synchronize(device)
    tic = time.perf_counter()
    run_epoch(model, optimizer, data, batch, shuffle)
    synchronize(device)
    return (time.perf_counter() - tic) * EPOCH_IMAGES / images


def measure(model_name: str, precision_name: str, args: argparse.Namespace,
            device: torch.device, rates: dict[str, float]) -> dict:
    batch = args.batch_size or BATCH[model_name.split(":")[0]]
    precision = Precision(precision_name, device)
    flops = step_flops(model_name, args.ed, batch, precision, device)
    if precision_name not in rates:
        rates[precision_name] = gemm_rate(args.gemm_size, DTYPES[precision_name], device,
                                          args.gemm_reps)
    floor = flops / batch * EPOCH_IMAGES / rates[precision_name]
    seconds = measured_epoch(model_name, args.ed, batch, precision_name, device,
                             args.timed_images)
    return {"model": model_name, "precision": precision_name, "batch_size": batch,
            "flops_per_step": flops, "gemm_flops_per_second": rates[precision_name],
            "floor_seconds_per_epoch": floor, "measured_seconds_per_epoch": seconds,
            "ratio": seconds / floor, "timed_images": args.timed_images}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="course,wide", help="comma-separated model specs")
    parser.add_argument("--precisions", default="32,bf16-mixed", help="comma-separated")
    parser.add_argument("--ed", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="one batch size for every model (default: course 1000, wide 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--gemm-reps", type=int, default=3)
    parser.add_argument("--timed-images", type=int, default=EPOCH_IMAGES,
                        help="images in the timed epoch (scaled to 60,000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--results", default=str(RESULTS_DIR),
                        help="folder for the results file ('' for none)")
    add_busy_option(parser)
    args = parser.parse_args(argv)
    busy = check_idle(args.allow_busy)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rates: dict[str, float] = {}
    rows = []
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for precision_name in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            row = measure(model_name, precision_name, args, device, rates)
            rows.append(row)
            print(f"{model_name:>8} {precision_name:>10}: {row['flops_per_step'] / 1e9:6.2f} "
                  f"GFLOP/step, GEMM {row['gemm_flops_per_second'] / 1e9:6.1f} GFLOP/s, floor "
                  f"{row['floor_seconds_per_epoch']:6.2f} s, measured "
                  f"{row['measured_seconds_per_epoch']:6.2f} s ({row['ratio']:.1f}x)",
                  file=sys.stderr if args.json else sys.stdout, flush=True)
    results = {"rows": rows, "device_name": device_description(device), "ed": args.ed,
               "threads": torch.get_num_threads(), "epoch_images": EPOCH_IMAGES,
               "mode": "tuned", "busy": busy,
               "native_bf16": native_bf16(device)}  # else bf16 is emulated: slow
    if args.json:
        print(json.dumps(results, indent=2))
    save_result("roofline", "roofline.py", results, args.results, device, argv,
                tag=device.type)
    return 0


if __name__ == "__main__":
    sys.exit(main())
