"""`aetool study`: every stage runs once, and a second run skips the finished work."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from aetool.cli import app
from aetool.study import StudySettings, run_study


def tiny(**overrides) -> StudySettings:
    values = dict(eds=[2, 3], lrs=[1e-2], weight_decays=[1e-5, 1e-4], folds=2, search_epochs=1,
                  max_epochs=2, val_size=100, max_loss=1.0, device="cpu",
                  noises=["original", "uniform"])
    values.update(overrides)
    return StudySettings(**values)


def test_study_runs_every_stage_then_skips_what_is_done(fake_data_dir, workspace):
    seen = []
    first = run_study(tiny(), workspace, data_dir=fake_data_dir,
                      on_stage=lambda r: seen.append(r.stage))
    assert seen == ["search", "fit", "corrupt", "embed", "report"]
    stages = {s["stage"]: s for s in first["stages"]}
    assert stages["fit"]["done"] == ["ed2", "ed3"]
    assert stages["corrupt"]["done"] == ["ed2", "ed3"]
    assert stages["embed"]["done"] == ["ed2", "ed3"]
    for name in ("ed2", "ed3"):
        for file in ("metrics.json", "noise_table.json", "embedding.json"):
            assert (workspace / name / file).is_file()
    assert (workspace / "search" / "results.json").is_file()
    assert (workspace / "report.html").is_file()
    saved = json.loads((workspace / "study.json").read_text())
    assert [s["stage"] for s in saved["stages"]] == seen
    assert all(s["seconds"] >= 0 for s in saved["stages"])
    # the fits used the search's best setting
    best = json.loads((workspace / "search" / "results.json").read_text())["eds"]["2"]["best"]
    config = json.loads((workspace / "ed2" / "config.json").read_text())
    assert config["weight_decay"] == best["weight_decay"]

    second = run_study(tiny(), workspace, data_dir=fake_data_dir)
    stages = {s["stage"]: s for s in second["stages"]}
    for stage in ("fit", "corrupt", "embed"):
        assert stages[stage]["done"] == [] and stages[stage]["skipped"] == ["ed2", "ed3"]


def test_study_cli_without_search(fake_data_dir, workspace):
    result = CliRunner().invoke(app, [
        "study", "--ed", "2", "--skip-search", "--max-epochs", "1", "--val-size", "100",
        "--device", "cpu", "--noise", "original", "--data-dir", str(fake_data_dir), "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["stage"] for s in summary["stages"]] == ["fit", "corrupt", "embed", "report"]
    assert not (workspace / "search").exists()


def test_study_rejects_bad_grid(workspace):
    result = CliRunner().invoke(app, ["study", "--folds", "1"])
    assert result.exit_code == 2 and "--folds" in result.output
