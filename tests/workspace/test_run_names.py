"""Run names and replacing a run: a run name (`--name`, `--run`) is one plain folder name,
`--force` replaces only a run once its replacement trained an epoch and keeps it on a bad
option, a swap killed halfway is undone, a name with Rich markup is printed as it is, and
`--runs` naming a file is refused.

Each test checks the message, the exit code, and that nothing outside the workspace and
nothing of an existing run changed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import Said, snapshot
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import SettingError
from aetool.train.loop import fit, fit_run, preset_config

runner = CliRunner()


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


def small_args(data_dir: Path) -> list[str]:
    return ["--max-epochs", "1", "--batch-size", "100", "--val-size", "100", "--device", "cpu",
            "--data-dir", str(data_dir)]


@pytest.fixture(autouse=True)
def deletes_only_inside(tmp_path, monkeypatch):
    """A safety net for these tests themselves: they hand aetool names like `/` and `..`
    with `--force`, so a regression must fail the test, not delete the machine. Every
    `shutil.rmtree` in this process (the CLI runs in-process) is refused outside `tmp_path`.
    (A run of these tests against the code before this issue was fixed, without this net,
    deleted /etc of the machine it ran on.)"""
    real = shutil.rmtree
    inside = tmp_path.resolve()

    def guarded(path, *args, **kwargs):
        target = Path(path).resolve()
        if target != inside and inside not in target.parents:
            raise AssertionError(f"aetool tried to delete {target}, outside the test's folder")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", guarded)


# --------------------------------------------------------------------------- 1. run names

BAD_NAMES = ["..", ".", "/", "../escape", "a/b", "a\\b", "/tmp/abs", "", ".hidden", "x\ny",
             "tab\there", "search", "x[/]y", "über"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_run_name_must_be_one_plain_folder_name(name, finished, fake_data_dir):
    parent, workspace = finished
    before = snapshot(parent)
    # The probe: a bad name, --force and a bad option together.
    probe = invoke("fit", "--name", name, "--force", "--dataset", "nope",
                   *small_args(fake_data_dir))
    assert probe.exit_code == 2, probe.output
    result = invoke("fit", "--name", name, "--force", *small_args(fake_data_dir))
    assert result.exit_code == 2, result.output
    assert "--name" in result.output and "not allowed" in result.output
    assert "Traceback" not in result.output
    assert snapshot(parent) == before


@pytest.mark.parametrize("command", ["corrupt", "embed"])
@pytest.mark.parametrize("name", ["..", "../sibling", "/tmp", "a/b"])
def test_run_options_refuse_paths(command, name, finished, fake_data_dir):
    parent, _ = finished
    before = snapshot(parent)
    result = invoke(command, "--run", name, "--device", "cpu", "--data-dir", fake_data_dir)
    assert result.exit_code == 2, result.output
    assert "--run" in result.output and "not allowed" in result.output
    assert snapshot(parent) == before


def test_the_library_refuses_bad_names_too(tmp_path, fake_split):
    config = preset_config(ed=2, max_epochs=1, batch_size=100, device="cpu")
    for name in ("..", "a/b", "/etc"):
        with pytest.raises(SettingError, match="not allowed") as caught:
            fit_run(config, tmp_path / "ws", name, split=fake_split)
        assert caught.value.field == "name"
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())
    assert runs.check_run_name("ed4-denoise_v1.2") == "ed4-denoise_v1.2"


# --------------------------------------------------------------------------- 2. --force


@pytest.mark.parametrize("bad", [
    ["--device", "tpu"], ["--dataset", "nope"], ["--val-size", "60000"],
    ["--noise", "occlusion:size=99"], ["--noise", "gaussian:sigma=nan"],
])
def test_force_with_a_bad_option_keeps_the_old_run(bad, finished, fake_data_dir):
    parent, workspace = finished
    before = snapshot(parent)
    result = invoke("fit", "--ed", "4", "--force", *small_args(fake_data_dir), *bad)
    assert result.exit_code == 2, result.output
    assert f"'{bad[0]}'" in result.output
    assert "fit ED=" not in result.output  # no progress bar before the error
    assert snapshot(parent) == before


def test_force_replaces_only_once_the_new_run_trained_an_epoch(finished, fake_split):
    _, workspace = finished
    before = snapshot(workspace / "ed4")
    config = preset_config(ed=4, max_epochs=2, batch_size=100, device="cpu")

    def broken_noise(x, generator):
        raise KeyboardInterrupt  # stopped during the first epoch

    with pytest.raises(KeyboardInterrupt):
        fit(config, workspace / "ed4", split=fake_split, existing="replace", noise=broken_noise)
    assert snapshot(workspace / "ed4") == before
    assert [p.name for p in workspace.iterdir()] == ["ed4"]  # no lock, no hidden folders

    result = fit(config, workspace / "ed4", split=fake_split, existing="replace")
    assert json.loads((workspace / "ed4" / runs.METRICS).read_text())["epochs"] == 2
    assert result.run_dir == workspace / "ed4"
    assert [p.name for p in workspace.iterdir()] == ["ed4"]


def test_a_replacement_killed_mid_swap_is_undone(finished, fake_data_dir):
    _, workspace = finished
    before = snapshot(workspace / "ed4")
    os.replace(workspace / "ed4", workspace / ".ed4.old-999999")  # killed between renames
    (workspace / ".ed4.new-999999").mkdir()
    result = invoke("fit", "--ed", "4", *small_args(fake_data_dir))
    assert result.exit_code == 1
    assert "Restored" in result.output and "already holds a finished run" in result.output
    assert snapshot(workspace / "ed4") == before
    assert sorted(p.name for p in workspace.iterdir()) == ["ed4"]


def test_a_failed_start_leaves_no_run_folder(sandbox, fake_data_dir):
    parent, workspace = sandbox
    result = invoke("fit", "--name", "fresh", *small_args(fake_data_dir), "--val-size", "60000")
    assert result.exit_code == 2 and "--val-size" in result.output
    assert not (workspace / "fresh").exists()
    assert not [p for p in workspace.iterdir()] if workspace.exists() else True


def test_a_folder_that_is_not_a_run_is_not_taken(sandbox, fake_data_dir):
    _, workspace = sandbox
    (workspace / "mine").mkdir(parents=True)
    (workspace / "mine" / "notes.txt").write_text("mine")
    result = invoke("fit", "--name", "mine", *small_args(fake_data_dir))
    assert result.exit_code == 1 and "not an aetool run" in result.output
    assert (workspace / "mine" / "notes.txt").read_text() == "mine"


def test_markup_in_a_hand_made_run_name_is_printed_as_it_is(finished, fake_data_dir):
    _, workspace = finished
    os.replace(workspace / "ed4", workspace / "odd[bold]x")  # Rich would eat "[bold]"
    for command in (["corrupt", "--noise", "original"], ["embed"]):
        result = invoke(*command, "--device", "cpu", "--data-dir", fake_data_dir)
        assert result.exit_code == 0, result.output
        assert "odd[bold]x" in result.output


def test_runs_pointing_at_a_file(tmp_path, fake_data_dir):
    target = tmp_path / "file"
    target.write_text("not a folder")
    for args in (["fit", *small_args(fake_data_dir)], ["corrupt"], ["report"]):
        result = invoke(*args, "--runs", target)
        assert result.exit_code == 2, result.output
        assert "--runs" in result.output and "is a file" in result.output
    assert target.read_text() == "not a folder"
