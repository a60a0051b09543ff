"""`aetool fit` and the command line as a whole: help, version, errors, JSON, interrupts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from fsguard import guarded_env
from typer.testing import CliRunner

from aetool import __version__
from aetool import workspace as runs
from aetool.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("search", "fit", "corrupt", "embed", "report"):
        assert command in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ed", "0"], "--ed"),
        (["--lr", "-1"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--preset", "nope"], "unknown preset"),
        (["--schedule", "wavy"], "constant or cosine"),
        (["--warmup-epochs", "-1"], "--warmup-epochs"),
        (["--lr", "abc"], "--lr"),
        (["--model", "nope"], "Unknown model 'nope'"),
        (["--model", "wide:depth=0"], "depth must be at least 1"),
        (["--model", "wide:depth=nan"], "depth must be a whole"),
    ],
)
def test_bad_options_exit_2_with_one_clear_message(args, needle, workspace):
    result = invoke("fit", *args)
    assert result.exit_code == 2
    assert needle in " ".join("".join(" " if c in "│╭╮╰╯─" else c for c in result.output).split())
    assert "Traceback" not in result.output and not workspace.exists()


def test_fit_json_and_run_folder(fake_data_dir, workspace):
    result = invoke("fit", "--ed", "3", "--max-epochs", "2", "--batch-size", "100",
                    "--warmup-epochs", "1", "--device", "cpu", "--data-dir", fake_data_dir,
                    "--val-size", "100", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ed"] == 3 and summary["epochs"] == 2
    assert summary["test_mse"] > 0
    run = runs.open_run(workspace / "ed3")
    assert run.finished and run.config["batch_size"] == 100
    assert run.config["preset"] == "best" and run.config["schedule"] == "cosine"
    assert run.config["warmup_epochs"] == 1

    again = invoke("fit", "--ed", "3", "--max-epochs", "2", "--data-dir", fake_data_dir)
    assert again.exit_code == 1
    assert "already holds a finished run" in again.output
    forced = invoke("fit", "--ed", "3", "--max-epochs", "1", "--batch-size", "100",
                    "--data-dir", fake_data_dir, "--force", "--val-size", "100", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["epochs"] == 1


def test_missing_data_is_one_sentence(tmp_path, workspace, monkeypatch):
    from aetool import data

    def refuse(*a, **k):
        raise OSError("closed")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)
    result = invoke("fit", "--max-epochs", "1", "--data-dir", tmp_path / "empty")
    assert result.exit_code == 1
    assert "Could not fetch mnist" in result.output
    assert "Traceback" not in result.output


def test_resume_without_a_run(workspace):
    result = invoke("fit", "--resume", "--name", "ghost")
    assert result.exit_code == 1 and "nothing to resume" in result.output


def test_sigterm_keeps_finished_epochs_and_resume_finishes(fake_data_dir, workspace):
    env = guarded_env(AETOOL_RUNS=str(workspace), AETOOL_DATA=str(fake_data_dir))
    cmd = [sys.executable, "-m", "aetool", "fit", "--ed", "2", "--max-epochs", "400",
           "--preset", "report", "--batch-size", "50", "--device", "cpu", "--patience", "0",
           "--val-size", "100"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    history = workspace / "ed2" / runs.HISTORY
    deadline = time.time() + 60
    while not history.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert history.exists(), proc.stderr.read().decode() if proc.poll() is not None else "slow"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    done = len(json.loads(history.read_text()))
    assert 1 <= done < 400
    assert not list((workspace / "ed2").glob(".*tmp*"))

    result = subprocess.run(
        [*cmd[:4], "--name", "ed2", "--resume", "--max-epochs", str(done + 1), "--json"],
        env=env, capture_output=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["epochs"] == done + 1


def test_the_default_validation_size_fits_a_small_data_set(tmp_path, fake_data_dir):
    """Issue 21: 600 training images get a sixth (100) for validation instead of a refusal of
    the default 10,000; an explicit size that does not fit is still refused."""
    common = ["fit", "--ed", "4", "--max-epochs", "1", "--batch-size", "100", "--device", "cpu",
              "--data-dir", str(fake_data_dir), "--runs", str(tmp_path / "ws")]
    result = CliRunner().invoke(app, common)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ws" / "ed4" / runs.METRICS).read_text())
    assert metrics["val_images"] == 100 and metrics["train_images"] == 500
    refused = CliRunner().invoke(app, [*common, "--name", "big", "--val-size", "10000"])
    assert refused.exit_code == 2 and "--val-size" in refused.output
