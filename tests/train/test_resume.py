"""`aetool fit --resume` after a real interruption: the command line in a subprocess is stopped
by SIGTERM, resumed, killed by SIGKILL, resumed again, and must end with exactly the test MSE,
history and weights of an uninterrupted run (README: "continues from there and reaches the
same result an uninterrupted run would"), with and without `--noise`.

tests/train/test_fit.py checks the library after a KeyboardInterrupt at an epoch boundary; here the
signals come from outside while the process trains, and SIGKILL gives it no chance to clean
up. Every run trains on the CPU with one thread, so results are compared bit for bit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from fsguard import guarded_env

from aetool import workspace as runs
from aetool.train.loop import fit, preset_config

# A short run of the default recipe (cosine schedule with warm-up): 500 training images in
# batches of 50, about 0.1-0.2 s an epoch here. The epochs are enough that the signals land
# mid-run with several epochs to spare.
EPOCHS = 12
SETTINGS = dict(ed=3, max_epochs=EPOCHS, batch_size=50, val_size=100, device="cpu")
NOISE = "gaussian:sigma=0.3"


@pytest.fixture()
def one_thread():
    """The subprocesses run with OMP_NUM_THREADS=1; the in-process run must match them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def command(data_dir: Path, root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aetool", "fit", "--name", name, "--device", "cpu",
            "--data-dir", str(data_dir), "--runs", str(root), *extra]


def env() -> dict[str, str]:
    return guarded_env(OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1", PYTHONPATH=str(ROOT))


def epochs_on_disk(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / runs.HISTORY).read_text()))
    except (FileNotFoundError, ValueError):
        return 0


def signal_at_epoch(cmd: list[str], run_dir: Path, epoch: int, sig: int) -> int:
    """Start `cmd`, send `sig` once history.json shows `epoch` epochs, return the epochs on
    disk after the process ended (it must have been stopped mid-run by the signal)."""
    log = run_dir.parent / f"{run_dir.name}-{signal.Signals(sig).name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as stderr:  # a file, not a pipe that could fill up and block it
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 120
        while proc.poll() is None and epochs_on_disk(run_dir) < epoch and time.time() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None:
            pytest.fail(f"`aetool fit` ended (exit {proc.returncode}) before epoch {epoch}: "
                        + log.read_text())
        proc.send_signal(sig)
        proc.wait(timeout=60)
    expected = 130 if sig == signal.SIGTERM else -sig
    assert proc.returncode == expected, log.read_text()
    done = epochs_on_disk(run_dir)
    assert epoch <= done < EPOCHS, f"the signal did not land mid-run ({done} epochs)"
    assert not (run_dir / runs.METRICS).exists()
    return done


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return state["model"] if "model" in state else state


def stop_twice_and_finish(data_dir: Path, root: Path, noise: str | None) -> Path:
    """Start a run, SIGTERM it at epoch 2, resume it, SIGKILL it two epochs later, resume it
    to the end; returns its run folder."""
    name = "denoising" if noise else "clean"
    run_dir = root / name
    noise_option = ["--noise", noise] if noise else []
    start = command(data_dir, root, name, "--ed", "3", "--max-epochs", str(EPOCHS),
                    "--batch-size", "50", "--val-size", "100", *noise_option)
    resume = command(data_dir, root, name, "--resume")
    after_term = signal_at_epoch(start, run_dir, 2, signal.SIGTERM)
    signal_at_epoch(resume, run_dir, after_term + 2, signal.SIGKILL)
    finished = subprocess.run([*resume, "--json"], env=env(), capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr.decode()
    assert json.loads(finished.stdout)["test_mse"] == runs.load_json(
        run_dir / runs.METRICS)["test_mse"]
    return run_dir


def test_sigterm_then_sigkill_then_resume_reaches_the_uninterrupted_result(
    fake_data_dir, tmp_path, one_thread
):
    # The clean and the denoising run go through their interruptions side by side (the
    # threads only start, watch and signal subprocesses); meanwhile this process trains
    # the uninterrupted runs they are compared with.
    with ThreadPoolExecutor(max_workers=2) as pool:
        stopped = {noise: pool.submit(stop_twice_and_finish, fake_data_dir, tmp_path / "runs",
                                      noise) for noise in (None, NOISE)}
        straight = {noise: fit(preset_config(noise=noise, **SETTINGS),
                               tmp_path / f"straight-{bool(noise)}", data_dir=fake_data_dir)
                    for noise in (None, NOISE)}
        run_dirs = {noise: future.result() for noise, future in stopped.items()}

    for noise, run_dir in run_dirs.items():
        expected = straight[noise]
        assert len(expected.history) == EPOCHS
        assert runs.load_json(run_dir / runs.CONFIG)["noise"] == noise
        metrics = runs.load_json(run_dir / runs.METRICS)
        assert metrics["test_mse"] == expected.test_mse, noise  # exactly: same arithmetic
        assert metrics["best_epoch"] == expected.best_epoch
        history = runs.load_json(run_dir / runs.HISTORY)
        assert [(r["epoch"], r["train_loss"], r["val_loss"], r["lr"]) for r in history] == [
            (r.epoch, r.train_loss, r.val_loss, r.lr) for r in expected.history
        ], noise
        for file in (runs.MODEL, runs.STATE):  # the best weights, and the last epoch's
            got, want = weights(run_dir / file), weights(expected.run_dir / file)
            assert got.keys() == want.keys()
            for key in want:
                assert torch.equal(got[key], want[key]), f"{noise}, {file}: {key} differs"
