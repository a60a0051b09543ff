"""Training to a time budget (`--time`): durations, the epochs that fit (measured with a fake
clock), the budget recorded and kept on resume, bad budgets, a warning when epochs run slower
than measured, `study --time` sharing its budget between the fits, and the report's test MSE
against the budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FakeClock
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.cli.longrun import Progress

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


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
