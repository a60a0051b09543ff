"""Accuracy check of `bf16-mixed`: test MSE against `32` at equal epochs, per built-in model.

Trains each model (course and wide, each with its batch size) at each ED (4 and 32) in both
precisions, with the same preset, seed and number of epochs, through `aetool.train.loop.fit` on
real MNIST (validation carved from the training split, the test set untouched until the end),
and reports each pair's test MSEs, the relative gap (bf16 / fp32 - 1) and whether it is
within 1%. `aetool.train.fast.precision.AUTO_BF16_CHECKED` may become True only once a committed
result file shows every pair within 1%.

    python benchmarks/precision_check.py --epochs 20            # a real check (hours on a CPU)
    python benchmarks/precision_check.py --smoke                # seconds, fake data, for tests
    python benchmarks/precision_check.py --models wide --train-images 5000 --epochs 10
        # the same comparison on the first 5,000 training images of the usual split, where
        # bf16 is emulated (a CPU without AVX512_BF16 or AMX) and whole epochs take too long

Each run writes `benchmarks/results/precision_check-<date>.json` (`--results DIR` elsewhere,
`--results ''` not at all), through benchmarks/record.py. Runs go to `--workspace` (default:
a temporary folder); a finished run there is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from aetool.config import FitConfig
from aetool.data import Split, load_dataset, split_train_val
from aetool.devices import resolve_device
from aetool.errors import AetoolError, SettingError
from aetool.train import loop as training
from aetool.train.fast.precision import native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS_DIR, save_result  # noqa: E402 (sibling)

BATCH = {"course": 1000, "wide": 128}
WITHIN = 0.01  # bf16-mixed's test MSE may be at most 1% above (or below) float32's
PRECISIONS = ("32", "bf16-mixed")


def train(model: str, ed: int, precision: str, args: argparse.Namespace, workspace: Path,
          split: Split | None, seed: int | None = None) -> dict:
    """Fit (or reuse) one run (`args.seed` unless `seed` is given) on `split` (None: the
    configured data set's usual split); its test MSE and time."""
    batch = args.batch_size or BATCH[model.split(":")[0]]
    seed = args.seed if seed is None else seed
    config = training.run_config(args.preset, ed=ed, model=model, precision=precision,
                                 max_epochs=args.epochs, batch_size=batch, seed=seed,
                                 device=args.device, val_size=args.val_size)
    name = f"precision-{model.split(':')[0]}-ed{ed}-{precision}"
    if seed != args.seed:
        name += f"-seed{seed}"
    if args.train_images:
        name += f"-{args.train_images}"
    print(f"{model} ED {ed} {precision}: training {args.epochs} epochs", file=sys.stderr,
          flush=True)
    result = training.fit_run(config, workspace, name, existing="continue",
                              data_dir=args.data_dir, split=split)
    return {"test_mse": result.test_mse, "epochs": len(result.history),
            "train_seconds": result.seconds, "batch_size": batch}


def _fewer_images(config: FitConfig, args: argparse.Namespace) -> Split | None:
    """The usual split (same validation and test images) with only the first
    `--train-images` training images; None (the whole split) without the option."""
    if not args.train_images:
        return None
    data = load_dataset(config.dataset, args.data_dir)
    split = split_train_val(data, config.val_size, config.split_seed)
    if not 0 < args.train_images <= split.train.shape[0]:
        raise SettingError("train_images", f"--train-images must be from 1 to "
                           f"{split.train.shape[0]}, got {args.train_images}.")
    keep = slice(None, args.train_images)
    labels = None if split.train_labels is None else split.train_labels[keep]
    return Split(split.train[keep], split.val, split.test, labels, split.val_labels,
                 split.test_labels)


def compare(model: str, ed: int, args: argparse.Namespace, workspace: Path,
            split: Split | None) -> dict:
    runs = {p: train(model, ed, p, args, workspace, split) for p in PRECISIONS}
    fp32, bf16 = runs["32"]["test_mse"], runs["bf16-mixed"]["test_mse"]
    gap = bf16 / fp32 - 1
    row = {}
    if args.control_seed is not None:  # how far float32 itself moves with another seed
        control = train(model, ed, "32", args, workspace, split, seed=args.control_seed)
        runs[f"32-seed{args.control_seed}"] = control
        seed_gap = control["test_mse"] / fp32 - 1
        row = {"seed_gap": seed_gap, "within_seed_spread": abs(gap) <= abs(seed_gap)}
    return {"model": model, "ed": ed, "epochs": args.epochs, "runs": runs, **row,
            "relative_gap": gap, "within_1_percent": abs(gap) <= WITHIN,
            "speedup": runs["32"]["train_seconds"] / max(runs["bf16-mixed"]["train_seconds"],
                                                         1e-9)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="course,wide", help="comma-separated model specs")
    parser.add_argument("--eds", default="4,32", help="comma-separated encoding dimensions")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every run")
    parser.add_argument("--preset", default="best")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="one batch size for every model (default: course 1000, wide 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-size", type=int, default=10_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--control-seed", type=int, default=None,
                        help="also train float32 with this seed: the gap between two float32 "
                        "seeds, beside bf16's gap, says how much of it is chance")
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on the first N training images of the usual split (the "
                        "validation and test images stay): for CPUs that emulate bf16")
    parser.add_argument("--data-dir", default=None, help="data root (default: aetool's cache)")
    parser.add_argument("--workspace", default=None, help="runs folder (default: temporary)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds: 1 epoch, ED 4, course and a narrow wide, batch "
                        "100, 100 validation images (for the tests, with --data-dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--results", default=str(RESULTS_DIR),
                        help="folder for the results file ('' for none)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.eds, args.epochs = "course,wide:width=8,hidden=32", "4", 1
        args.batch_size, args.val_size = 100, 100
    models = _split_specs(args.models)
    eds = [int(e) for e in args.eds.split(",")]
    with tempfile.TemporaryDirectory() as temp:
        workspace = Path(args.workspace or temp)
        # every run's data: the same split (the data set, validation size and split seed do
        # not change between runs), loaded and checked once, before the first run starts
        split = _fewer_images(training.run_config(args.preset, device=args.device,
                                                  val_size=args.val_size), args)
        rows = [compare(m, ed, args, workspace, split) for m in models for ed in eds]
    device = resolve_device(args.device)
    results = {"rows": rows, "all_within_1_percent": all(r["within_1_percent"] for r in rows),
               "preset": args.preset, "smoke": args.smoke,
               "train_images": args.train_images,  # None: the whole training split
               "native_bf16": native_bf16(device)}  # else bf16 is emulated: slow
    for r in rows:
        seed = f"; another float32 seed {r['seed_gap']:+.2%}" if "seed_gap" in r else ""
        print(f"{r['model']:>8} ED {r['ed']:>2}: 32 {r['runs']['32']['test_mse']:.5f} "
              f"bf16-mixed {r['runs']['bf16-mixed']['test_mse']:.5f} ({r['relative_gap']:+.2%}"
              f", {'within' if r['within_1_percent'] else 'OUTSIDE'} 1%{seed})",
              file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results, indent=2))
    save_result("precision_check", "precision_check.py", results, args.results, device, argv)
    return 0


def _split_specs(text: str) -> list[str]:
    """Model specs separated by commas, where a spec's own parameters also use commas: a new
    spec starts at a word without '='."""
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part and ":" not in part and specs:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AetoolError as exc:  # a bad option (SettingError) exits 2, a problem found later 1
        print(exc, file=sys.stderr)
        sys.exit(2 if isinstance(exc, SettingError) else 1)
