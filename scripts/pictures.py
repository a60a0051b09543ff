"""Make the pictures the README and the docs show, from real runs: `python scripts/pictures.py`.

A small study on the real MNIST (aetool's data cache, fetched on first use) with aetool's Python
API, in a temporary workspace: a grid search, ED 4 and ED 8 fitted for a few epochs, the noise
table, the latent space and the HTML report. It copies the latent plots and the noise examples
into `docs/img/`, screenshots the report with headless Chromium and writes
`docs/img/pictures.json`: for each picture its sha256 and what made it (this script, the
study's settings, the runs' results, aetool's and torch's versions, the date).
tests/docs/test_pictures.py fails when a picture the docs show is not the one recorded there.

Where Chromium is missing the script says so and keeps the old screenshot (and its record).
It writes only into `--out` and a temporary workspace; one thread, about four minutes on a
CPU. `--data DIR --tiny` runs the same code on a small data root in seconds (the tests do).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
MANIFEST = "pictures.json"
SCRIPT = "scripts/pictures.py"
SCREENSHOT = "report.png"
WINDOW = (1200, 1500)  # the screenshot's size in CSS pixels: the report's first sections

# The study's settings (aetool.experiment.StudySettings): the real run, and a tiny one for tests.
REAL = dict(eds=[4, 8], lrs=[1e-2, 3e-3], weight_decays=[1e-5], folds=2, search_epochs=4,
            search_limit=12000, max_epochs=5, device="cpu", seed=0)
TINY = dict(eds=[2], lrs=[1e-2], weight_decays=[1e-5], folds=2, search_epochs=1,
            max_loss=1.0, max_epochs=1, val_size=100, device="cpu", seed=0,
            noises=["original", "gaussian:sigma=0.5", "occlusion"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_study_into(workspace: Path, settings: dict[str, Any], data_dir: Path | None) -> None:
    """The study (search, fit, corrupt, embed, report) into `workspace`, progress on stderr."""
    from aetool.experiment import StudySettings, run_study

    def on_stage(result: Any) -> None:
        print(f"{result.stage}: {result.seconds:.0f} s", file=sys.stderr, flush=True)

    run_study(StudySettings(**settings), workspace, data_dir=data_dir, on_stage=on_stage)


def run_summaries(workspace: Path, eds: list[int]) -> dict[str, Any]:
    """What each run of the study became: its settings and results, for the record."""
    summaries = {}
    for ed in eds:
        folder = workspace / f"ed{ed}"
        config = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        embedding = json.loads((folder / "embedding.json").read_text())
        summaries[f"ed{ed}"] = {
            **{k: config.get(k) for k in ("model", "lr", "weight_decay", "batch_size",
                                          "max_epochs", "schedule", "dataset")},
            "test_mse": metrics.get("test_mse"),
            "best_epoch": metrics.get("best_epoch"),
            "dataset_sha256": metrics.get("dataset_sha256"),
            "silhouette": embedding.get("silhouette"),
            "knn_accuracy": embedding.get("knn_accuracy"),
        }
    return summaries


def copies(workspace: Path, eds: list[int]) -> dict[str, tuple[Path, str]]:
    """Picture name -> (the file in the workspace, what it shows)."""
    pictures = {f"latent_pca_ed{ed}.png": (
        workspace / f"ed{ed}" / "latent_pca.png",
        f"`aetool embed`'s PCA plot of the ED {ed} run's test codes") for ed in eds}
    pictures[f"noise_examples_ed{eds[0]}.png"] = (
        workspace / f"ed{eds[0]}" / "noise_examples.png",
        f"`aetool corrupt`'s examples of the ED {eds[0]} run under each noise")
    return pictures


def find_chromium() -> str | None:
    """Chromium (or Chrome) on the PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(chromium: str, page: Path, target: Path) -> None:
    """A headless Chromium screenshot of `page` into `target`. Chromium's profile, cache,
    sockets and crash files go into a temporary folder (HOME and TMPDIR too, kept short: a
    socket's path has at most 107 bytes), so nothing is written outside it and `target`."""
    with tempfile.TemporaryDirectory(prefix="aetool-chromium-") as scratch:
        env = {**os.environ, "HOME": scratch, "TMPDIR": scratch,
               "XDG_CONFIG_HOME": f"{scratch}/config", "XDG_CACHE_HOME": f"{scratch}/cache"}
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--no-first-run", "--disable-breakpad", "--force-device-scale-factor=1",
                   f"--user-data-dir={scratch}/profile", f"--crash-dumps-dir={scratch}",
                   f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={target.resolve()}",
                   page.resolve().as_uri()]
        done = subprocess.run(command, env=env, cwd=scratch, capture_output=True, text=True,
                              timeout=120)
    if done.returncode != 0 or not target.is_file():
        raise RuntimeError(f"{chromium} made no screenshot of {page} (exit {done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")


def provenance(settings: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """What made a picture: this script, the study's settings and runs, versions, date."""
    import torch

    import aetool

    return {
        "made_by": SCRIPT,
        "settings": settings,
        "runs": runs,
        "aetool": aetool.__version__,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def make_pictures(out: Path, *, data_dir: Path | None = None, tiny: bool = False,
                  chromium: str | None = None) -> dict[str, Any]:
    """Run the study, write its pictures and `pictures.json` into `out`; return the manifest.

    Without `chromium`, the old screenshot in `out` and its record are kept (if any)."""
    settings = dict(TINY if tiny else REAL)
    out.mkdir(parents=True, exist_ok=True)
    old_path = out / MANIFEST
    old = json.loads(old_path.read_text())["pictures"] if old_path.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="aetool-pictures-") as scratch:
        work = Path(scratch) / "runs"
        run_study_into(work, settings, data_dir)
        made = provenance(settings, run_summaries(work, settings["eds"]))
        pictures: dict[str, Any] = {}
        for name, (source, what) in copies(work, settings["eds"]).items():
            shutil.copyfile(source, out / name)
            pictures[name] = {"sha256": sha256(out / name), "shows": what, **made}
        if chromium is not None:
            screenshot(chromium, work / "report.html", out / SCREENSHOT)
            pictures[SCREENSHOT] = {
                "sha256": sha256(out / SCREENSHOT),
                "shows": f"`aetool report`'s page, the top {WINDOW[0]}x{WINDOW[1]} pixels, "
                         f"in headless {Path(chromium).name}", **made}
        elif SCREENSHOT in old and (out / SCREENSHOT).is_file():
            pictures[SCREENSHOT] = old[SCREENSHOT]
    for name in set(old) - set(pictures):  # pictures this script made before, not made now
        if Path(name).name == name:  # a plain file name in `out`, nothing elsewhere
            (out / name).unlink(missing_ok=True)
    manifest = {"command": f"python {SCRIPT}", "pictures": dict(sorted(pictures.items()))}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where the pictures go "
                        "(default: docs/img)")
    parser.add_argument("--data", type=Path, default=None, help="the data root (default: "
                        "aetool's data cache, $AETOOL_DATA)")
    parser.add_argument("--tiny", action="store_true", help="one ED, one epoch: to test this "
                        "script on a small data set")
    parser.add_argument("--no-chromium", action="store_true", help="keep the old screenshot")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    chromium = None if args.no_chromium else find_chromium()
    if chromium is None:
        print("Chromium is not here (or --no-chromium), so the report's screenshot is not made "
              f"again: {args.out / SCREENSHOT} and its record stay as they were.",
              file=sys.stderr)
    manifest = make_pictures(args.out, data_dir=args.data, tiny=args.tiny, chromium=chromium)
    for name in manifest["pictures"]:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported (in main)
    sys.exit(main())
