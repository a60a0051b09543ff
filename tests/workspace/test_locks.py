"""The run lock: two fits on one name (one trains, the other is refused naming the holder),
`corrupt` and `embed` refuse a run in use, a stale lock is taken over with a warning, the lock
is reentrant and released, and a waiting lock gets its turn."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Said, snapshot
from fsguard import guarded_env
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import RunError

runner = CliRunner()


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


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
    assert f"in use by process {first.pid} (aetool fit)" in second.stderr
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
        with pytest.raises(RunError, match=rf"in use by process {holder.pid} \(python\)"):
            runs.RunLock(tmp_path, "search", "The search results").acquire()
        tic = time.monotonic()
        with runs.RunLock(tmp_path, "search", "The search results", wait=30):
            assert time.monotonic() - tic < 30
    finally:
        holder.wait(timeout=30)


@pytest.mark.parametrize(("argv", "said"), [
    (["/venv/bin/aetool", "fit", "--ed", "4"], "aetool fit"),
    (["/site-packages/aetool/__main__.py", "corrupt"], "aetool corrupt"),
    (["/site-packages/aetool/search/__main__.py"], "aetool search worker"),
    (["benchmarks/precision_check.py", "--models", "wide"], "precision_check.py"),
    (["-c"], "python"),
    ([""], "python"),
])
def test_a_lock_says_which_program_holds_it(argv, said):
    """The note beside a lock names the command or program that holds it: a benchmark script
    that took a run's lock was named `aetool --models` (its first argument)."""
    assert runs.holder_command(argv) == said


def test_a_script_holding_a_lock_is_named_in_the_refusal(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text("import time\nfrom aetool import workspace\n"
                      f"lock = workspace.RunLock({str(tmp_path)!r}, 'r').acquire()\n"
                      "print('locked', flush=True)\ntime.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, str(script), "--flag"], stdout=subprocess.PIPE,
                              text=True, env=guarded_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=rf"in use by process {holder.pid} \(hold\.py\)"):
            runs.RunLock(tmp_path, "r").acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
