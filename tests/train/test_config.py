"""One owner for the settings (issue 22): `aetool.config` declares every setting once, from shared
parts; `FitConfig()` is the default preset; a config.json of any earlier version reads back as
it was trained; the search's batch size is decided in one place; the CLI repeats no default."""

from __future__ import annotations

import warnings
from dataclasses import asdict, fields

import pytest
import typer
from typer.testing import CliRunner

from aetool import config
from aetool.cli import app
from aetool.cli.common import shown
from aetool.config import (
    DEFAULT_PRESET,
    PRESETS,
    SEARCH_BATCH_SIZE,
    FitConfig,
    SearchConfig,
    StudySettings,
    preset_config,
)
from aetool.errors import SettingError

runner = CliRunner()

# The report's training, every field spelt out: what `preset_config("report")` gives and what
# a config.json written by an earlier aetool (whose defaults were these) reads back as.
REPORT = dict(
    ed=4, lr=1e-2, weight_decay=1e-5, batch_size=1000, max_epochs=2000, schedule="constant",
    warmup_epochs=0, patience=100, tolerance=1e-4, val_size=None, split_seed=0, seed=0,
    device="auto", dataset="mnist", resize=False, model="course", noise=None, preset="report",
    time_budget=None, precision="32",
)


def test_fitconfig_is_the_default_preset():
    assert FitConfig() == preset_config() == preset_config(DEFAULT_PRESET)
    default = FitConfig()
    for name, value in PRESETS[DEFAULT_PRESET].items():
        assert getattr(default, name) == value, name
    assert default.preset == DEFAULT_PRESET and default.batch_size == 128


def test_the_report_preset_gives_the_reports_values_exactly():
    assert asdict(preset_config("report")) == REPORT


def test_a_config_json_of_an_earlier_version_reads_back_as_it_was_trained():
    # the first config.json format: no schedule, warm-up, precision, model, data set or preset
    first = {"ed": 8, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 1000, "max_epochs": 2000,
             "patience": 100, "tolerance": 1e-4, "val_size": None, "split_seed": 0, "seed": 0,
             "device": "auto"}
    assert asdict(FitConfig.from_dict(first)) == {**REPORT, **first}
    assert asdict(FitConfig.from_dict({})) == REPORT
    partial = FitConfig.from_dict({"batch_size": 64, "max_epochs": 5})
    assert (partial.schedule, partial.warmup_epochs, partial.patience, partial.precision,
            partial.preset) == ("constant", 0, 100, "32", "report")


def test_a_config_json_of_this_version_reads_back_unchanged():
    for config_ in (FitConfig(), preset_config("report"), preset_config(ed=2, seed=7)):
        assert FitConfig.from_dict(asdict(config_)) == config_


def test_every_settings_class_is_built_from_the_shared_parts():
    for cls in (FitConfig, SearchConfig, StudySettings):
        for part in (config.SeedSettings, config.DataSettings, config.ModelSettings):
            assert issubclass(cls, part), (cls, part)
    for cls in (SearchConfig, StudySettings):
        assert issubclass(cls, config.GridSettings)
    # a shared field is declared once: in its part, not again in the classes built from it
    shared = {f.name for part in (config.SeedSettings, config.DataSettings, config.ModelSettings)
              for f in fields(part)}
    for cls in (FitConfig, SearchConfig, StudySettings):
        assert not shared & set(vars(cls).get("__annotations__", {})), cls


@pytest.mark.parametrize("values, field", [
    ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"), ({"model": " "}, "model"),
    ({"precision": "fp8"}, "precision"), ({"val_size": 0}, "val_size"),
    ({"dataset": ""}, "dataset"), ({"device": ""}, "device"),
])
def test_a_shared_setting_is_checked_by_one_rule_with_one_message(values, field):
    messages = set()
    for cls in (FitConfig, SearchConfig, StudySettings):
        with pytest.raises(SettingError) as caught:
            cls(**values).validate()
        assert caught.value.field == field, cls
        messages.add(str(caught.value))
    assert len(messages) == 1, messages
    assert messages.pop().startswith(f"{field} must ")


def test_the_old_names_are_the_same_objects():
    import aetool
    import aetool.experiment
    import aetool.search.grid

    assert aetool.search.grid.SearchConfig is SearchConfig is aetool.SearchConfig
    assert aetool.experiment.StudySettings is StudySettings is aetool.StudySettings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert aetool.search.SearchConfig is SearchConfig


def test_the_search_trains_at_the_reports_batch_size_decided_in_one_place():
    assert SEARCH_BATCH_SIZE == PRESETS["report"]["batch_size"] == 1000
    assert SearchConfig().batch_size == SEARCH_BATCH_SIZE
    assert StudySettings().search_config().batch_size == SEARCH_BATCH_SIZE


# The library's name of each option that is named otherwise on the command line.
FIELD_OF = {"ed": ("ed", "eds"), "lr": ("lr", "lrs"), "weight_decay": ("weight_decay",
            "weight_decays"), "noise": ("noise", "noises"), "method": ("methods",),
            "time": ("time_budget",)}
SETTINGS_OF = {"fit": FitConfig, "search": SearchConfig, "study": StudySettings}


def command_params(name: str):
    command = typer.main.get_command(app).commands[name]
    return [p for p in command.params if p.name]


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_the_cli_repeats_no_library_default(name):
    """An option that sets a library setting defaults to None (a switch: to False, as the
    library does), so the library fills it; its help shows the library's default."""
    defaults = {f.name: getattr(SETTINGS_OF[name](), f.name) for f in fields(SETTINGS_OF[name])}
    matched = 0
    for param in command_params(name):
        field = next((f for f in FIELD_OF.get(param.name, (param.name,)) if f in defaults), None)
        if field is None:
            continue
        matched += 1
        library = defaults[field]
        if getattr(param, "is_flag", False) and param.default is False:
            assert library is False, param.name
            continue
        assert param.default is None, (param.name, param.default, library)
        if library is not None and library != [] and field not in PRESETS[DEFAULT_PRESET]:
            assert param.show_default == shown(library), (param.name, param.show_default)
    assert matched >= 8, matched


def test_the_help_shows_the_library_defaults():
    text = " ".join(runner.invoke(app, ["search", "--help"], terminal_width=200).output.split())
    # (typer writes a default the command shows but does not pass in parentheses)
    assert f"[default: ({SEARCH_BATCH_SIZE})]" in text
    assert "[default: (4 8 16 32)]" in text


def test_no_compile_is_hidden_and_deprecated(monkeypatch, tmp_path):
    from aetool.cli import fit as fit_command

    assert "--no-compile" not in runner.invoke(app, ["fit", "--help"]).output
    seen = {}

    def stop(*args, mode, **kwargs):
        seen["mode"] = mode
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_command, "train_with_progress", stop)
    result = runner.invoke(app, ["fit", "--no-compile", "--runs", str(tmp_path / "ws")])
    assert result.exit_code == 130 and seen["mode"] == "eager"
    assert "--no-compile is deprecated" in result.stderr
    assert "--mode eager" in result.stderr
