"""Progress of long commands: plain lines (at most one per `--log-every` interval, plus the
first and the last) when the output is not a terminal, in a log while `fit` runs, `--quiet`,
and `--threads` on every long command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, FakeClock
from fsguard import guarded_env
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.cli.longrun import Progress, clock_text

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_plain_lines_at_most_one_per_interval_plus_first_and_last():
    clock, lines = FakeClock(), []
    with Progress(live=False, interval=10, write=lines.append, clock=clock) as progress:
        task = progress.add("fit ED=4", total=6, unit="epoch")
        for epoch in range(1, 7):
            clock.now += 4  # an epoch every 4 s
            task.update(completed=epoch, status=f"train 0.0{epoch} val 0.0{epoch}")
    # epochs 1 (first), 4 (12 s after it), 6 (the last); not 2, 3 or 5
    assert [line.split(":")[1].split()[1] for line in lines] == ["1/6", "4/6", "6/6"]
    assert lines[0] == "fit ED=4: epoch 1/6  train 0.01 val 0.01  elapsed 0:04  eta 0:20"
    assert lines[-1].endswith("elapsed 0:24  eta 0:00")


def test_quiet_prints_nothing_and_every_update_with_interval_zero():
    lines = []
    with Progress(live=False, quiet=True, write=lines.append) as progress:
        progress.add("corrupt", total=3).update(completed=1)
    assert lines == []
    with Progress(live=False, interval=0, write=lines.append) as progress:
        task = progress.add("corrupt", total=3)
        for _ in range(3):
            task.advance()
    assert len(lines) == 3 and lines[-1].startswith("corrupt: 3/3")


def test_the_library_progress_events_are_shown_by_one_renderer():
    """`Progress` is the library's `ProgressFn`: each `ProgressEvent` moves the line of its
    task (added with its first event unless `add` made it), in the format above."""
    from aetool.errors import ProgressEvent

    clock, lines = FakeClock(), []
    with Progress(live=False, interval=0, write=lines.append, clock=clock) as progress:
        progress.add("search", total=8, unit="models")
        clock.now += 3
        progress(ProgressEvent("search", 2, 8, "ED 3: 2 settings x 2 folds", "models"))
        progress(ProgressEvent("embed", 0, 2, unit="runs", name="ed4"))
        clock.now += 3
        progress(ProgressEvent("embed", 1, 2, unit="runs", name="ed8"))
    assert lines == ["search: models 2/8  ED 3: 2 settings x 2 folds  elapsed 0:03  eta 0:09",
                     "embed ed4: runs 0/2  elapsed 0:00  eta ?",
                     "embed ed8: runs 1/2  elapsed 0:03  eta 0:03"]
    assert [t.description for t in progress.tasks] == ["search", "embed ed8"]


def test_a_data_set_loader_may_tell_downloads_either_way():
    """A loader's `progress` takes a `ProgressEvent`, or the older `(label, done, total)`."""
    from aetool.data.registry import loader_progress
    from aetool.errors import ProgressEvent

    events = []
    tell = loader_progress(events.append)
    tell("a.gz", 10, 100)
    tell(ProgressEvent("download a.gz", 100, 100, unit="bytes"))
    assert events == [ProgressEvent("download a.gz", 10, 100, unit="bytes"),
                      ProgressEvent("download a.gz", 100, 100, unit="bytes")]
    assert loader_progress(None) is None


def test_corrupt_and_embed_report_with_the_protocol(fake_data, fake_data_dir, tmp_path):
    """corrupt_models and embed_runs tell one `ProgressFn` of each run as it starts and of
    each row / the end, as `ProgressEvent`s (what the CLI's `Progress` shows)."""
    from aetool.config import preset_config
    from aetool.data import split_train_val
    from aetool.errors import ProgressEvent
    from aetool.evaluate.corrupt import corrupt_models, run_targets
    from aetool.evaluate.embed import embed_runs
    from aetool.noises import parse_noise_specs
    from aetool.train.loop import fit

    config = preset_config("report", ed=2, max_epochs=1, batch_size=100, device="cpu")
    fit(config, tmp_path / "ed2", split=split_train_val(fake_data, val_size=100, seed=0))
    found = [runs.open_run(tmp_path / "ed2")]
    events = []
    corrupt_models(run_targets(found, "cpu"), parse_noise_specs(["original", "uniform"]),
                   data_dir=fake_data_dir, examples=0, on_progress=events.append)
    embed_runs(found, data_dir=fake_data_dir, on_progress=events.append)
    assert events == [ProgressEvent("corrupt", 0, 2, "", "rows", "ed2"),
                      ProgressEvent("corrupt", 1, 2, "original", "rows", "ed2"),
                      ProgressEvent("corrupt", 2, 2, events[2].status, "rows", "ed2"),
                      ProgressEvent("embed", 0, 1, unit="runs", name="ed2"),
                      ProgressEvent("embed", 1, 1, "done", "runs")]
    assert events[2].status.startswith("uniform")


def test_clock_text():
    assert clock_text(5) == "0:05" and clock_text(3725) == "1:02:05" and clock_text(None) == "?"


def test_fit_writes_epoch_lines_to_a_log_while_it_runs(fake_data_dir, workspace):
    env = guarded_env(AETOOL_RUNS=str(workspace), AETOOL_DATA=str(fake_data_dir),
                      OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "aetool", "fit", "--ed", "2", "--max-epochs", "300",
           "--preset", "report", "--batch-size", "50", "--device", "cpu", "--patience", "0",
           "--val-size", "100", "--log-every", "0", "--threads", "1", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    try:
        for line in proc.stderr:  # a pipe, not a terminal: plain lines, as they come
            seen.append(line)
            if "epoch 3/300" in line:
                break
        assert proc.poll() is None, "".join(seen)  # still training when its lines arrived
    finally:
        proc.kill()
        proc.communicate()
    epochs = [line for line in seen if line.startswith("fit ED=2: epoch ")]
    assert len(epochs) == 3, seen
    assert "train " in epochs[0] and " val " in epochs[0] and "eta " in epochs[0]


def test_fit_quiet_and_threads_recorded(fake_data_dir, workspace):
    result = invoke("fit", "--ed", "2", "--max-epochs", "2", "--batch-size", "100",
                    "--val-size", "100", "--device", "cpu", "--data-dir", fake_data_dir,
                    "--quiet", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    assert "epoch" not in result.stderr
    metrics = runs.load_json(workspace / "ed2" / runs.METRICS)
    assert metrics["environment"]["threads"] == 1


@pytest.mark.parametrize("command", ["fit", "search", "corrupt", "embed", "study"])
def test_long_commands_take_quiet_threads_and_log_every(command):
    result = invoke(command, "--help")
    for option in ("--quiet", "--threads", "--log-every"):
        assert option in result.output, (command, option)


@pytest.mark.parametrize("command", ["fit", "search", "corrupt", "embed", "study"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_threads_below_one_exit_2_naming_the_option(command, value, workspace):
    result = invoke(command, "--threads", value, "--runs", workspace)
    assert result.exit_code == 2, result.output
    flat = " ".join("".join(" " if c in "│╭╮╰╯─" else c for c in result.output).split())
    assert "--threads" in flat and f"must be at least 1, got {value}" in flat
    assert "Traceback" not in result.output and not workspace.exists()
