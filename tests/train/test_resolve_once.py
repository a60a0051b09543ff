"""Each spec of a fit is resolved once, at its entry, and passed down (issue 22): the model spec
is parsed once and its network built and contract-checked once, the data set resolved once,
provenance computed once; the default run name is decided in one place; the settings are
saved once (config.json, not state.pt); one `existing=` says what to do with a run there."""

from __future__ import annotations

import collections
import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

import aetool.data
import aetool.models
from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import SettingError
from aetool.train import loop
from aetool.train.loop import fit, fit_run, preset_config, resume_config

SETTINGS = dict(ed=2, max_epochs=2, batch_size=100, val_size=100, device="cpu")


@pytest.fixture()
def calls(monkeypatch) -> collections.Counter:
    """How often a fit parses a model spec, checks a network's contract (once per build),
    resolves a data set and computes its provenance."""
    counter: collections.Counter = collections.Counter()

    def counting(module, name, key):
        original = getattr(module, name)

        def counted(*args, **kwargs):
            counter[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    counting(aetool.models, "get_model", "model")  # every parse_model_spec looks the name up
    counting(aetool.models, "check_contract", "network")  # every build of a run's network
    counting(aetool.data, "resolve_dataset", "dataset")
    counting(loop, "provenance", "provenance")
    return counter


ONCE = {"model": 1, "network": 1, "dataset": 1, "provenance": 1}


def test_fit_run_resolves_each_spec_once(calls, workspace, fake_data_dir):
    config = preset_config(**SETTINGS, model="wide:width=8", dataset="mnist")
    calls.clear()
    fit_run(config, workspace, data_dir=fake_data_dir)
    assert dict(calls) == ONCE


def test_a_time_budget_builds_no_second_checked_network(calls, workspace, fake_data_dir):
    config = preset_config(**{**SETTINGS, "max_epochs": 50}, time_budget=3.0)
    calls.clear()
    fit_run(config, workspace, "timed", data_dir=fake_data_dir)
    assert dict(calls) == ONCE


def test_resume_resolves_each_spec_once(calls, workspace, fake_data_dir):
    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_run(preset_config(**SETTINGS), workspace, data_dir=fake_data_dir, on_epoch=stop)
    calls.clear()
    fit_run(resume_config(workspace / "ed2"), workspace, existing="resume",
            data_dir=fake_data_dir)
    assert dict(calls) == ONCE


def test_the_command_line_resolves_each_spec_once_past_its_option_checks(
        calls, workspace, fake_data_dir):
    args = ["fit", "--ed", "2", "--max-epochs", "1", "--batch-size", "100", "--val-size", "100",
            "--device", "cpu", "--data-dir", str(fake_data_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # `--dataset` left out has no option check (the library fills the default), so the fit
    # resolves it once; the model is spelt out once for the new run's settings (`run_config`),
    # then once by the fit
    assert dict(calls) == {**ONCE, "model": 2}
    calls.clear()
    result = CliRunner().invoke(app, [*args, "--force", "--model", "wide:width=8"])
    assert result.exit_code == 0, result.output
    assert dict(calls) == {**ONCE, "model": 3}  # and `--model` by its option

    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_run(preset_config(**SETTINGS), workspace, "half", data_dir=fake_data_dir,
                on_epoch=stop)
    calls.clear()
    result = CliRunner().invoke(app, ["fit", "--name", "half", "--resume", "--data-dir",
                                      str(fake_data_dir)])
    assert result.exit_code == 0, result.output
    assert dict(calls) == ONCE


def test_the_default_run_name_is_decided_in_one_place(monkeypatch, workspace, fake_data_dir):
    monkeypatch.setattr(runs, "default_run_name", lambda c: f"auto-{getattr(c, 'ed', c)}")
    fit_run(preset_config(**{**SETTINGS, "max_epochs": 1}), workspace, data_dir=fake_data_dir)
    assert (workspace / "auto-2" / runs.METRICS).is_file()
    result = CliRunner().invoke(app, ["fit", "--ed", "3", "--max-epochs", "1", "--batch-size",
                                      "100", "--val-size", "100", "--device", "cpu",
                                      "--data-dir", str(fake_data_dir)])
    assert result.exit_code == 0, result.output
    assert (workspace / "auto-3" / runs.METRICS).is_file()


def test_default_run_name():
    assert runs.default_run_name(preset_config(ed=7)) == "ed7"
    assert runs.default_run_name(12) == "ed12"


def _stopped_run(path, fake_split, **settings):
    def stop(record, cfg):
        if record.epoch == 2:
            raise KeyboardInterrupt

    config = preset_config("report", **{**SETTINGS, "max_epochs": 4, **settings})
    with pytest.raises(KeyboardInterrupt):
        fit(config, path, split=fake_split, on_epoch=stop)
    return config


def test_state_pt_holds_no_settings_and_resume_reads_config_json(fake_split, tmp_path):
    straight = fit(preset_config("report", **{**SETTINGS, "max_epochs": 4}), tmp_path / "a",
                   split=fake_split)
    _stopped_run(tmp_path / "r", fake_split)
    state = torch.load(tmp_path / "r" / runs.STATE, weights_only=True)
    assert "config" not in state
    settings = json.loads((tmp_path / "r" / runs.CONFIG).read_text())
    assert settings["max_epochs"] == 4
    resumed = fit(resume_config(tmp_path / "r"), tmp_path / "r", split=fake_split,
                  existing="resume")
    assert resumed.test_mse == straight.test_mse
    assert json.loads((tmp_path / "r" / runs.CONFIG).read_text()) == settings


def test_a_state_pt_of_the_old_layout_still_resumes(fake_split, tmp_path):
    """Before issue 22, state.pt held the settings too ("config"); such a run resumes, and
    config.json is the record it resumes by."""
    config = _stopped_run(tmp_path / "r", fake_split)
    straight = fit(config, tmp_path / "a", split=fake_split)
    state = torch.load(tmp_path / "r" / runs.STATE, weights_only=True)
    old = {**state, "config": {**json.loads((tmp_path / "r" / runs.CONFIG).read_text()),
                               "lr": 0.5}}  # what it says is not read
    old["config"].pop("provenance", None)
    torch.save(old, tmp_path / "r" / runs.STATE)
    resumed = fit(resume_config(tmp_path / "r"), tmp_path / "r", split=fake_split,
                  existing="resume")
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.test_mse == straight.test_mse


def test_resume_with_a_new_length_records_it_in_config_json(fake_split, tmp_path):
    _stopped_run(tmp_path / "r", fake_split)
    resumed = fit(resume_config(tmp_path / "r", max_epochs=3), tmp_path / "r", split=fake_split,
                  existing="resume")
    assert len(resumed.history) == 3
    assert json.loads((tmp_path / "r" / runs.CONFIG).read_text())["max_epochs"] == 3


def test_fit_takes_existing_like_fit_run(fake_split, tmp_path):
    config = _stopped_run(tmp_path / "r", fake_split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = fit(config, tmp_path / "r", split=fake_split, existing="continue")
    assert len(done.history) == 4
    again = fit(config, tmp_path / "r", split=fake_split, existing="continue")
    assert again.test_mse == done.test_mse and again.run_dir == tmp_path / "r"
    replaced = fit(preset_config("report", **{**SETTINGS, "max_epochs": 1}), tmp_path / "r",
                   split=fake_split, existing="replace")
    assert len(replaced.history) == 1
    with pytest.raises(SettingError, match="existing must be one of"):
        fit(config, tmp_path / "r", split=fake_split, existing="overwrite")


def test_resume_and_replace_keywords_are_deprecated(fake_split, tmp_path):
    config = _stopped_run(tmp_path / "r", fake_split)
    with pytest.warns(DeprecationWarning, match="existing='resume'"):
        result = fit(config, tmp_path / "r", split=fake_split, resume=True)
    assert len(result.history) == 4
    with pytest.warns(DeprecationWarning, match="existing='replace'"):
        fit(config, tmp_path / "r", split=fake_split, replace=True)
    with pytest.raises(SettingError, match="exclude each other"), \
            pytest.warns(DeprecationWarning):
        fit(config, tmp_path / "r", split=fake_split, resume=True, replace=True)
