"""Long runs (issue 15): progress as plain lines in logs, --quiet, --threads, training to a time
budget, and `search --workers` on one machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fsguard import guarded_env
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.cli.longrun import Progress, clock_text

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- progress lines


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


# --------------------------------------------------------------------------- time budget


def test_durations():
    from aetool.train.budget import parse_duration

    assert parse_duration("10m") == 600 and parse_duration("1h30m") == 5400
    assert parse_duration("90") == 90 and parse_duration("45s") == 45
    assert parse_duration("2h") == 7200 and parse_duration("1m30s") == 90
    for bad in ("", "0", "-5m", "ten", "5x", "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


class TickingClock:
    """Each reading is `step` seconds after the one before, like a machine where everything
    measured takes exactly one tick."""

    def __init__(self, step: float = 1.0) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_epoch_arithmetic_with_a_fake_clock(monkeypatch):
    from aetool.train import budget

    clock = FakeClock()
    batches = []

    def train_batches(k):  # each training batch "takes" 0.05 s, one validation pass 0.5 s
        batches.append(k)
        clock.now += 0.05 * k
        return k

    def evaluate_val():
        clock.now += 0.5

    monkeypatch.setattr(budget, "clock", clock)
    plan = budget.plan_epochs(120.0, train_batches, evaluate_val, batches_per_epoch=391,
                              test_ratio=1.0, cap=10_000)
    assert plan.batch_seconds == pytest.approx(0.05)
    assert plan.epoch_seconds == pytest.approx(391 * 0.05 + 0.5)  # 20.05 s
    # measured: warm-up, then chunks of 10 batches for at least 2.4 s (2% of 120 s)
    assert batches[0] == budget.WARMUP_BATCHES and set(batches[1:]) == {budget.CHUNK_BATCHES}
    spent = plan.measure_seconds
    assert spent == pytest.approx(0.05 * sum(batches) + 0.5)
    # (120 s - measuring - the test pass) x 0.9, over 20.05 s an epoch
    assert plan.max_epochs == int((120 - spent - 0.5) * budget.MARGIN // 20.05) == 5
    assert budget.plan_epochs(120.0, train_batches, evaluate_val, batches_per_epoch=391,
                              test_ratio=1.0, cap=3).max_epochs == 3  # --max-epochs is smaller
    with pytest.raises(budget.AetoolError, match="less than one epoch"):
        budget.plan_epochs(10.0, train_batches, evaluate_val, batches_per_epoch=391,
                           test_ratio=1.0, cap=100)


def test_fit_to_a_time_budget_records_it_and_resumes_with_its_length(
    fake_data_dir, workspace, monkeypatch
):
    from aetool.config import learning_rate
    from aetool.train import budget
    from aetool.train.loop import fit_run, resume_config, run_config

    monkeypatch.setattr(budget, "clock", TickingClock())  # every measurement takes 1 s
    config = run_config(ed=2, batch_size=100, val_size=100, device="cpu", time_budget=20.0,
                        max_epochs=budget.MAX_EPOCHS)
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 2
        fit_run(config, workspace, "timed", data_dir=fake_data_dir,
                on_epoch=lambda record, cfg: _stop_at(record, 2))
    saved = runs.load_json(workspace / "timed" / runs.CONFIG)
    # 500 training images at batch 100: 5 batches an epoch, measured as one chunk (1 s, so
    # 0.2 s a batch) after the warm-up; validation 1 s, so an epoch is 2 s and the test pass
    # (200 images, twice the validation set) 2 s; 6 s went to measuring (six clock readings
    # after the first). (20 - 6 - 2) x 0.9 / 2 = 5.4: five epochs.
    assert saved["time_budget"] == 20.0 and saved["max_epochs"] == 5

    def no_clock():
        raise AssertionError("a resumed run must not measure again")

    monkeypatch.setattr(budget, "clock", no_clock)
    resumed = resume_config(workspace / "timed")
    assert resumed.max_epochs == 5
    result = fit_run(resumed, workspace, "timed", existing="resume", data_dir=fake_data_dir)
    assert len(result.history) == 5
    assert [r.lr for r in result.history] == pytest.approx(
        [learning_rate(resumed, e) for e in range(5)])
    assert result.metrics["time_budget"] == {"budget": 20.0}


def _stop_at(record, epoch):
    if record.epoch == epoch:
        raise KeyboardInterrupt


@pytest.mark.parametrize("args", [["--time", "10x"], ["--time", "0"],
                                  ["--resume", "--time", "10m"]])
def test_bad_time_budgets_exit_2(args, workspace):
    result = invoke("fit", *args)
    assert result.exit_code == 2, result.output
    assert "--time" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- search --workers


def test_search_workers_share_the_cores_and_train_each_point_once(fake_data_dir, workspace):
    from collections import Counter

    from aetool.search.grid import SearchConfig
    from aetool.search.storage import open_storage

    grid = ["--ed", "3", "--ed", "5", "--lr", "1e-2", "--lr", "1e-3", "--lr", "1e-4",
            "--weight-decay", "1e-5", "--weight-decay", "1e-4", "--folds", "2", "--epochs",
            "3", "--batch-size", "50", "--val-size", "100", "--limit", "200", "--max-loss", "1"]
    env = guarded_env(AETOOL_RUNS=str(workspace), AETOOL_DATA=str(fake_data_dir),
                      OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "aetool", "search", *grid, "--device", "cpu",
                           "--workers", "2", "--json"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["complete"] is True
    config = SearchConfig(eds=[3, 5], lrs=[1e-2, 1e-3, 1e-4], weight_decays=[1e-5, 1e-4],
                          folds=2, epochs=3, batch_size=50, val_size=100, limit=200,
                          max_loss=1.0)
    storage = open_storage(None, workspace)
    trials = storage.get_all_trials(storage.get_study_id_from_name(config.default_study_name()))
    complete = Counter((t.params["ed"], t.params["lr"], t.params["weight_decay"])
                       for t in trials if t.state.name == "COMPLETE")
    assert len(complete) == 12 and set(complete.values()) == {1}
    assert not [t for t in trials if t.state.name in ("FAIL", "RUNNING")]
    cores = len(os.sched_getaffinity(0))
    assert {t.user_attrs["threads"] for t in trials if t.state.name == "COMPLETE"} == {
        max(1, cores // 2)}


# --------------------------------------------------------------------------- study --time


def test_study_splits_its_time_budget(tmp_path):
    from aetool.errors import AetoolError
    from aetool.experiment import REST_SHARE, StudySettings, split_time

    settings = StudySettings(eds=[4, 8], time_budget=1000.0)
    split, plan = split_time(settings, tmp_path, 100.0)  # the search took 100 s
    assert plan["fits"] == ["ed4", "ed8"]
    assert split.fit_seconds == plan["seconds_per_fit"] == (1000 * (1 - REST_SHARE) - 100) / 2
    runs.save_json(tmp_path / "ed4" / runs.METRICS, {})  # ed4 is trained already
    split, plan = split_time(settings, tmp_path, 100.0)
    assert plan["fits"] == ["ed8"] and split.fit_seconds == 800
    with pytest.raises(AetoolError, match="too little is left"):
        split_time(settings, tmp_path, 895.0)


def test_study_with_a_time_budget_fits_to_its_share(fake_data_dir, workspace, monkeypatch):
    from aetool.experiment import StudySettings, run_study
    from aetool.train import budget

    monkeypatch.setattr(budget, "clock", TickingClock())  # every measurement takes 1 s
    summary = run_study(StudySettings(eds=[2], skip_search=True, time_budget=40.0,
                                      val_size=100, device="cpu", noises=["original"]),
                        workspace, data_dir=fake_data_dir)
    plan = summary["time_plan"]
    assert plan["fits"] == ["ed2"] and plan["seconds_per_fit"] == pytest.approx(36, abs=1)
    config = runs.load_json(workspace / "ed2" / runs.CONFIG)
    assert config["time_budget"] == pytest.approx(36, abs=1)
    # 4 batches of 128 an epoch (one 1 s chunk after the warm-up) + 1 s validation = 2 s;
    # 6 s measuring, 2 s test: (36 - 8) x 0.9 / 2 = 12.6
    assert config["max_epochs"] == 12


def test_report_shows_test_mse_against_the_time_budget(fake_data_dir, workspace, monkeypatch):
    from aetool.report.render import collect_report, render_report
    from aetool.train import budget
    from aetool.train.loop import fit_run, run_config

    monkeypatch.setattr(budget, "clock", TickingClock())
    for seconds, name in ((20.0, "ed2-time-20s"), (24.0, "ed2-time-24s")):
        fit_run(run_config(ed=2, batch_size=100, val_size=100, device="cpu",
                           time_budget=seconds, max_epochs=budget.MAX_EPOCHS),
                workspace, name, data_dir=fake_data_dir)
    data = collect_report(workspace)
    assert "time-budget" in [s["id"] for s in data["sections"]]
    points = data["time_budget"]["points"]
    assert [(p["name"], p["epochs"]) for p in points] == [("ed2-time-20s", 5),
                                                          ("ed2-time-24s", 7)]
    assert data["time_budget"]["plot"].startswith("data:image/png;base64,")
    html = render_report(workspace, data)
    assert "Test MSE against training time" in html and "ed2-time-24s" in html


def test_fit_warns_when_epochs_run_slower_than_measured(monkeypatch, capsys):
    from types import SimpleNamespace

    from aetool.cli import fit as fit_cli
    from aetool.config import FitConfig
    from aetool.train.loop import EpochRecord

    clock, lines = FakeClock(), []
    config = FitConfig(ed=4, max_epochs=6, time_budget=60.0)  # measured: 10 s an epoch

    def slow_fit_run(config, runs_root, name, *, on_epoch, **options):
        history = []
        for epoch in range(1, 7):
            clock.now += 20  # twice as slow as measured: a busier machine
            history.append(EpochRecord(epoch, 0.05, 0.05, 0.01, 20.0))
            on_epoch(history[-1], config)
        return SimpleNamespace(history=history)

    monkeypatch.setattr(fit_cli, "fit_run", slow_fit_run)
    progress = Progress(live=False, interval=0, write=lines.append, clock=clock)
    fit_cli.train_with_progress(config, Path("runs"), "ed4", "refuse", progress=progress)
    warning = " ".join(capsys.readouterr().err.split())
    assert "slower than measured" in warning and "about 2m, not 1m" in warning
    assert warning.count("Warning") == 1
