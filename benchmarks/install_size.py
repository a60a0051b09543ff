"""What PyTorch's CPU build saves: installed size of torch and its GPU libraries in two venvs.

Sums the size on disk of the packages PyTorch brings (`torch`, `nvidia*`, `triton`, `cuda*`)
in each virtual environment's site-packages, and the size of the wheel files given:

    python benchmarks/install_size.py --venv cuda=.venv --venv cpu=/tmp/cpuvenv \
        --wheel /path/to/torch-...+cpu-...whl --results benchmarks/results
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

from record import save_result

PATTERNS = ("torch", "nvidia", "triton", "cuda", "cuda_*", "torch-*.dist-info")


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def venv_sizes(venv: Path) -> dict:
    site = next(iter(glob.glob(str(venv / "lib" / "python*" / "site-packages"))))
    sizes = {}
    for pattern in PATTERNS:
        for found in sorted(glob.glob(os.path.join(site, pattern))):
            sizes[Path(found).name] = tree_bytes(Path(found))
    infos = [n for n in sizes if n.startswith("torch-") and n.endswith(".dist-info")]
    version = infos[0].removeprefix("torch-").removesuffix(".dist-info") if infos else None
    return {"torch": version, "bytes": sizes, "total_mb": round(sum(sizes.values()) / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", action="append", default=[], help="LABEL=PATH")
    parser.add_argument("--wheel", action="append", default=[])
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    results = {"venvs": {}, "wheels": {}}
    for item in args.venv:
        label, _, path = item.partition("=")
        results["venvs"][label] = venv_sizes(Path(path))
        print(label, results["venvs"][label]["torch"], results["venvs"][label]["total_mb"], "MB")
    for wheel in args.wheel:
        size = Path(wheel).stat().st_size
        results["wheels"][Path(wheel).name] = {"bytes": size, "mb": round(size / 2**20)}
        print(Path(wheel).name, round(size / 2**20), "MB")
    save_result("install_size", "install_size.py", results, args.results)


if __name__ == "__main__":
    main()
