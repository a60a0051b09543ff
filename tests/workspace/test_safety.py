"""Nothing outside the workspace is touched, no run is silently overwritten, every bad file or
value gets one sentence and the right exit code (issue: reliability and data loss).

Each test checks the message, the exit code, and that nothing outside the workspace and
nothing of an existing run changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import copy_runs
from fsguard import guarded_env
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import RunError, SettingError
from aetool.train.loop import fit, fit_run, preset_config

runner = CliRunner()


class Said:
    """A command's result, its output with Rich's panel borders and line wrapping undone."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.raw = result.output
        text = "".join(" " if c in "│╭╮╰╯─" else c for c in result.output)
        self.output = " ".join(text.split())
        self.stdout = result.stdout


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (names relative to it) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


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


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    """parent/ holding a sibling folder with a file that must survive, and parent/ws, the
    workspace (as $AETOOL_RUNS)."""
    parent = tmp_path / "parent"
    (parent / "sibling").mkdir(parents=True)
    (parent / "sibling" / "keep.txt").write_text("precious")
    workspace = parent / "ws"
    monkeypatch.setenv("AETOOL_RUNS", str(workspace))
    return parent, workspace


@pytest.fixture()
def finished(sandbox, trained_runs):
    """The sandbox with a finished run `ed4` (a copy of conftest's) in its workspace."""
    parent, workspace = sandbox
    copy_runs(trained_runs, workspace, "ed4")
    return parent, workspace


# --------------------------------------------------------------------------- 1. run names

BAD_NAMES = ["..", ".", "/", "../escape", "a/b", "a\\b", "/tmp/abs", "", ".hidden", "x\ny",
             "tab\there", "search", "x[/]y", "über"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_run_name_must_be_one_plain_folder_name(name, finished, fake_data_dir):
    parent, workspace = finished
    before = snapshot(parent)
    # The issue's probe: a bad name, --force and a bad option together.
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
        fit(config, workspace / "ed4", split=fake_split, replace=True, noise=broken_noise)
    assert snapshot(workspace / "ed4") == before
    assert [p.name for p in workspace.iterdir()] == ["ed4"]  # no lock, no hidden folders

    result = fit(config, workspace / "ed4", split=fake_split, replace=True)
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


# --------------------------------------------------------------------------- 3. the lock


def _env(workspace: Path, data_dir: Path) -> dict[str, str]:
    return guarded_env(AETOOL_RUNS=str(workspace), AETOOL_DATA=str(data_dir),
                       OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1")


def test_two_fits_on_one_name_one_trains_the_other_is_refused(sandbox, fake_data_dir):
    _, workspace = sandbox
    env = _env(workspace, fake_data_dir)
    base = [sys.executable, "-m", "aetool", "fit", "--name", "same", "--batch-size", "20",
            "--val-size", "100", "--device", "cpu", "--preset", "report", "--patience", "0"]
    first = subprocess.Popen([*base, "--ed", "4", "--max-epochs", "500"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock, history = workspace / ".same.lock", workspace / "same" / runs.HISTORY
    deadline = time.time() + 120
    while not history.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the first one is training (an epoch is saved) and holds the lock
    assert history.exists() and lock.exists(), first.communicate()[1].decode()
    second = subprocess.run([*base, "--ed", "8", "--max-epochs", "1"], env=env,
                            capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err.decode()  # stopped by us, not by the second one
    assert second.returncode == 1, second.stderr
    assert f"in use by process {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    saved = json.loads((workspace / "same" / runs.CONFIG).read_text())
    assert saved["ed"] == 4 and len(json.loads(history.read_text())) >= 1
    assert not lock.exists()


@pytest.mark.parametrize("command", ["corrupt", "embed"])
def test_corrupt_and_embed_refuse_a_run_in_use(command, finished, fake_data_dir):
    _, workspace = finished
    before = snapshot(workspace / "ed4")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from aetool import runs; "
         f"lock = runs.RunLock({str(workspace)!r}, 'ed4').acquire(); "
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=_env(workspace, fake_data_dir))
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke(command, "--run", "ed4", "--device", "cpu", "--data-dir", fake_data_dir)
        assert result.exit_code == 1, result.output
        assert f"in use by process {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(workspace / "ed4") == before


def test_a_stale_lock_is_taken_over_with_a_warning(finished, fake_data_dir):
    _, workspace = finished
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (workspace / ".ed4.lock.json").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "command": "aetool fit"}))
    result = invoke("corrupt", "--run", "ed4", "--noise", "original", "--device", "cpu",
                    "--data-dir", fake_data_dir)
    assert result.exit_code == 0, result.output
    assert f"locked by process {dead.pid}" in result.output and "taking it over" in result.output
    assert not (workspace / ".ed4.lock").exists() and not (workspace / ".ed4.lock.json").exists()


def test_the_lock_is_reentrant_and_released(tmp_path):
    lock = runs.RunLock(tmp_path, "x")
    with lock, runs.RunLock(tmp_path, "x"):
        assert (tmp_path / ".x.lock").exists()
    assert not (tmp_path / ".x.lock").exists()


# --------------------------------------------------------------------------- 4-7. files


def _edit_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("command", ["corrupt", "embed"])
def test_config_with_wrong_types_is_one_sentence(command, finished, fake_data_dir):
    _, workspace = finished
    _edit_json(workspace / "ed4" / runs.CONFIG, {"ed": "four", "batch_size": -5})
    result = invoke(command, "--device", "cpu", "--data-dir", fake_data_dir)
    assert result.exit_code == 1, result.output
    assert "config.json" in result.output and "ed must be a whole number" in result.output
    assert "Traceback" not in result.output


def test_resume_with_a_bad_config_is_one_sentence(sandbox, fake_data_dir):
    _, workspace = sandbox
    (workspace / "half").mkdir(parents=True)
    _edit_json(workspace / "half" / runs.CONFIG, {"ed": "four", "batch_size": -5})
    result = invoke("fit", "--name", "half", "--resume", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "config.json" in result.output and "ed must be a whole number" in result.output
    assert "fit ED=" not in result.output


def test_report_shows_an_unreadable_run_and_renders_the_rest(finished, fake_data_dir):
    _, workspace = finished
    assert invoke("fit", "--ed", "2", *small_args(fake_data_dir)).exit_code == 0
    _edit_json(workspace / "ed4" / runs.METRICS, [])
    result = invoke("report")
    assert result.exit_code == 1, result.output  # written, but a run was left out
    assert "ed4 is left out of the report" in result.output
    html = (workspace / "report.html").read_text()
    assert "metrics.json must hold a JSON object" in html and ">ed2<" in html
    corrupt = invoke("corrupt", "--device", "cpu", "--data-dir", fake_data_dir)
    assert corrupt.exit_code == 1 and "metrics.json" in corrupt.output


def test_resume_from_a_state_of_another_shape(sandbox, fake_data_dir, fake_split):
    _, workspace = sandbox
    config = preset_config(ed=4, max_epochs=3, batch_size=100, device="cpu", val_size=100)

    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, workspace / "r", split=fake_split, on_epoch=stop)
    state = torch.load(workspace / "r" / runs.STATE, weights_only=True)
    state["model"]["encoder_lin.2.weight"] = torch.zeros(7, 64)
    torch.save(state, workspace / "r" / runs.STATE)
    before = snapshot(workspace)
    result = invoke("fit", "--name", "r", "--resume", "--data-dir", fake_data_dir)
    assert result.exit_code == 1, result.output
    assert "state.pt does not match" in result.output and "Traceback" not in result.output
    assert snapshot(workspace) == before


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


# --------------------------------------------------------------------------- 8-10.


@pytest.mark.parametrize("spec", ["gaussian:sigma=nan", "gaussian:sigma=inf",
                                  "gaussian:sigma=1e999", "uniform:low=1,high=0"])
def test_non_finite_and_contradictory_noises_are_refused(spec, finished, fake_data_dir):
    _, workspace = finished
    assert invoke("corrupt", "--noise", "original", "--device", "cpu",
                  "--data-dir", fake_data_dir).exit_code == 0
    before = snapshot(workspace)
    result = invoke("corrupt", "--noise", spec, "--device", "cpu", "--data-dir", fake_data_dir)
    assert result.exit_code == 2, result.output
    assert "finite number" in result.output or "low must not be above high" in result.output
    fitted = invoke("fit", "--name", "denoise", "--noise", spec, *small_args(fake_data_dir))
    assert fitted.exit_code == 2, fitted.output
    assert snapshot(workspace) == before


def test_a_noise_plugin_validates_its_parameters_together():
    from aetool.noises import Noise, NoiseParam

    noise = Noise("band", "", lambda x, g, a, b: x,
                  (NoiseParam("a", float, 0.0), NoiseParam("b", float, 1.0)),
                  validate=lambda a, b: None if a < b else (_ for _ in ()).throw(
                      ValueError("a must be below b")))
    assert noise.configure(a=0.5).params == {"a": 0.5, "b": 1.0}
    with pytest.raises(Exception, match="Noise 'band': a must be below b."):
        noise.configure(a=2.0)


def test_a_pickled_object_is_refused_without_pointing_at_the_unsafe_path(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Anything()}, path)
    result = invoke("corrupt", "--checkpoint", path)
    assert result.exit_code == 1
    assert "not a plain tensor checkpoint" in result.output
    assert "will not unpickle" in result.output
    assert "weights_only" not in result.output and "Re-running" not in result.output
    with pytest.raises(RunError, match="not a plain tensor checkpoint"):
        runs.load_torch(path)


class Anything:
    """Any Python object: pickled into a checkpoint, it must never be unpickled."""


def test_report_into_a_new_folder_says_so(finished):
    _, workspace = finished
    out = workspace.parent / "new" / "deeper" / "r.html"
    result = invoke("report", "--output", out)
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert f"Created the folder {workspace.parent / 'new'}" in result.output


def test_a_waiting_lock_gets_its_turn(tmp_path):
    """Search workers wait for the results lock instead of failing (it is held only for a
    write); a lock that does not wait is refused at once."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time; from aetool import runs; "
         f"lock = runs.RunLock({str(tmp_path)!r}, 'search').acquire(); "
         "print('locked', flush=True); time.sleep(3.0); lock.release()"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"in use by process {holder.pid}"):
            runs.RunLock(tmp_path, "search", "The search results").acquire()
        tic = time.monotonic()
        with runs.RunLock(tmp_path, "search", "The search results", wait=30):
            assert time.monotonic() - tic < 30
    finally:
        holder.wait(timeout=30)
