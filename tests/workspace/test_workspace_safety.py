"""Nothing outside the workspace is written or deleted, second round (issue 20, "Critical"):
the lock file and temporary files never follow a planted link, `--force` replaces only a run
aetool made, a name taken from a file cannot leave the output folder, and the recovery of a
killed swap touches its own run only. Hostile lock files and folders that cannot be written get
one sentence.

Every planted link points into `outside/`, a sibling of the workspace inside the test's own
temporary folder, whose bytes are compared before and after.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import copy_runs
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import AetoolError, RunError
from aetool.files import save_json, write_atomic

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    text = "".join(" " if c in "│╭╮╰╯─" else c for c in result.output)
    result.said = " ".join(text.split())
    return result


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` with its bytes (a link: where it points)."""
    found: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            found[str(p.relative_to(folder))] = "-> " + os.readlink(p)
        elif p.is_file():
            found[str(p.relative_to(folder))] = p.read_bytes()
    return found


def small(data_dir: Path) -> list[str]:
    return ["--max-epochs", "1", "--batch-size", "100", "--val-size", "100", "--device", "cpu",
            "--data-dir", str(data_dir)]


@pytest.fixture()
def outside(tmp_path) -> Path:
    """A folder beside the workspace with a file that must not change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    return folder


@pytest.fixture()
def ws(trained_runs, tmp_path, monkeypatch) -> Path:
    """A workspace with a finished run `ed4` (a copy of conftest's), as $AETOOL_RUNS."""
    root = copy_runs(trained_runs, tmp_path / "runs", "ed4")
    monkeypatch.setenv("AETOOL_RUNS", str(root))
    return root


# --------------------------------------------------------------------------- 1. links


@pytest.mark.parametrize("command", [
    ["corrupt", "--run", "ed4", "--noise", "original"],
    ["embed", "--run", "ed4"],
    ["fit", "--ed", "4", "--force"],
])
@pytest.mark.parametrize("dangling", [False, True])
def test_a_lock_file_that_is_a_link_is_refused_and_not_followed(command, dangling, ws, outside,
                                                                  fake_data_dir):
    target = outside / ("created-by-aetool" if dangling else "thesis.txt")
    (ws / ".ed4.lock").symlink_to(target)
    before, run_before = snapshot(outside), snapshot(ws / "ed4")
    extra = small(fake_data_dir) if command[0] == "fit" else [
        "--device", "cpu", "--data-dir", fake_data_dir]
    result = invoke(*command, *extra)
    assert result.exit_code == 1, result.output
    assert "symbolic link" in result.said and ".ed4.lock" in result.said
    assert "Traceback" not in result.output
    assert snapshot(outside) == before and not (outside / "created-by-aetool").exists()
    assert snapshot(ws / "ed4") == run_before


def test_a_note_beside_the_lock_that_is_a_link_is_replaced_not_followed(ws, outside,
                                                                         fake_data_dir):
    (ws / ".ed4.lock.json").symlink_to(outside / "thesis.txt")
    before = snapshot(outside)
    result = invoke("corrupt", "--run", "ed4", "--noise", "original", "--device", "cpu",
                    "--data-dir", fake_data_dir)
    assert result.exit_code == 0, result.output
    assert snapshot(outside) == before
    assert not (ws / ".ed4.lock.json").exists()


def test_an_atomic_write_replaces_a_link_and_never_follows_it(tmp_path, outside):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").symlink_to(outside / "thesis.txt")
    before = snapshot(outside)
    save_json(folder / "metrics.json", {"test_mse": 0.1})
    assert snapshot(outside) == before
    assert not (folder / "metrics.json").is_symlink()
    assert json.loads((folder / "metrics.json").read_text()) == {"test_mse": 0.1}
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json"]  # no temporary left


def test_temporary_names_are_unpredictable_and_opened_exclusively(tmp_path, monkeypatch):
    """Every temporary file is created with O_CREAT | O_EXCL | O_NOFOLLOW under a fresh name:
    a link planted under the old predictable name (`.NAME.tmpPID`) is never opened."""
    opened = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append((Path(path).name, flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    (tmp_path / f".x.json.tmp{os.getpid()}").symlink_to(tmp_path / "nowhere")
    write_atomic(tmp_path / "x.json", b"1")
    write_atomic(tmp_path / "x.json", b"2")
    names = [name for name, _ in opened]
    assert len(set(names)) == 2 and all(n.startswith(".x.json.") for n in names)
    for _, flags in opened:
        assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW
    assert not (tmp_path / "nowhere").exists() and (tmp_path / "x.json").read_bytes() == b"2"


def test_a_run_folder_that_is_a_link_is_not_written(ws, outside, fake_data_dir):
    (ws / "linked").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    for force in ([], ["--force"]):
        result = invoke("fit", "--name", "linked", *force, *small(fake_data_dir))
        assert result.exit_code in (1, 2), result.output
        assert "symbolic link" in result.said
    assert snapshot(outside) == before


# --------------------------------------------------------------------------- 2. --force


def test_force_does_not_delete_a_folder_that_is_not_a_run(ws, fake_data_dir):
    (ws / "notes" / "chapter").mkdir(parents=True)
    (ws / "notes" / "chapter" / "thesis.txt").write_text("thesis")
    before = snapshot(ws / "notes")
    result = invoke("fit", "--name", "notes", "--force", *small(fake_data_dir))
    assert result.exit_code == 2, result.output
    assert "--force" in result.said and "not an aetool run" in result.said
    assert str(ws / "notes") in result.said and "chapter/" in result.said
    assert snapshot(ws / "notes") == before


def test_force_does_not_delete_a_users_file_put_in_a_run(ws, fake_data_dir):
    (ws / "ed4" / "my-notes.txt").write_text("do not lose")
    before = snapshot(ws / "ed4")
    result = invoke("fit", "--ed", "4", "--force", *small(fake_data_dir))
    assert result.exit_code == 2 and "my-notes.txt" in result.said, result.output
    assert snapshot(ws / "ed4") == before


def test_force_still_replaces_a_run_aetool_made(ws, fake_data_dir):
    corrupted = invoke("corrupt", "--run", "ed4", "--noise", "original", "--device", "cpu",
                       "--data-dir", fake_data_dir)
    embedded = invoke("embed", "--run", "ed4", "--device", "cpu", "--data-dir", fake_data_dir)
    assert corrupted.exit_code == 0 and embedded.exit_code == 0, corrupted.output
    old = (ws / "ed4" / runs.METRICS).read_bytes()
    result = invoke("fit", "--ed", "4", "--force", "--seed", "3", *small(fake_data_dir))
    assert result.exit_code == 0, result.output
    assert (ws / "ed4" / runs.METRICS).read_bytes() != old
    assert sorted(p.name for p in ws.iterdir()) == ["ed4"]


# --------------------------------------------------------------------------- 3. derived names


def test_a_checkpoint_named_dot_dot_cannot_write_beside_the_output(ws, tmp_path, fake_data_dir):
    checkpoint = tmp_path / "...pt"
    checkpoint.write_bytes((ws / "ed4" / runs.MODEL).read_bytes())
    out = tmp_path / "box" / "out"
    out.mkdir(parents=True)
    result = invoke("corrupt", "--checkpoint", checkpoint, "--output", out, "--noise",
                    "original", "--device", "cpu", "--data-dir", fake_data_dir)
    assert result.exit_code == 2, result.output
    assert "--checkpoint" in result.said and "'..'" in result.said
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["out"]
    assert not any(out.iterdir())


# --------------------------------------------------------------------------- 4. recovery


@pytest.mark.parametrize("leftover", [".ed4.new-x.old-7", ".ed4.old-keep.old-7",
                                      ".ed4.new-7x", ".ed4.old-7.old-8"])
def test_recovery_touches_only_its_own_runs_leftovers(leftover, ws, fake_data_dir):
    (ws / leftover).mkdir()
    (ws / leftover / "config.json").write_text("{}")
    shutil_free = snapshot(ws / leftover)
    result = invoke("fit", "--ed", "4", *small(fake_data_dir))
    assert result.exit_code == 1 and "already holds a finished run" in result.said
    assert "Restored" not in result.said
    assert snapshot(ws / leftover) == shutil_free


def test_recovery_restores_its_own_backup_by_exact_name(ws, fake_data_dir):
    before = snapshot(ws / "ed4")
    os.replace(ws / "ed4", ws / ".ed4.old-12345")
    (ws / ".ed4x.old-1").mkdir()  # another run's backup: left alone
    result = invoke("fit", "--ed", "4", *small(fake_data_dir))
    assert "Restored" in result.said and result.exit_code == 1
    assert snapshot(ws / "ed4") == before and (ws / ".ed4x.old-1").is_dir()


# --------------------------------------------------------------------------- hostile locks


@pytest.mark.parametrize("note", ['{"pid": "abc"}', '{"pid": 1e20}', "[1, 2]", "garbage",
                                  '{"pid": 100000000000000000000}', '{"pid": -5, "host": 7}'])
def test_a_hostile_lock_note_is_ignored(note, ws, fake_data_dir):
    (ws / ".ed4.lock.json").write_text(note)
    result = invoke("corrupt", "--run", "ed4", "--noise", "original", "--device", "cpu",
                    "--data-dir", fake_data_dir)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_a_lock_that_is_a_folder_gets_one_sentence(ws, fake_data_dir):
    (ws / ".ed4.lock").mkdir()
    result = invoke("embed", "--run", "ed4", "--device", "cpu", "--data-dir", fake_data_dir)
    assert result.exit_code == 1, result.output
    assert "is a folder, not a lock file aetool made" in result.said


def test_the_holders_note_is_read_for_the_message(tmp_path):
    with runs.RunLock(tmp_path, "x"):
        note = json.loads((tmp_path / ".x.lock.json").read_text())
        assert note["pid"] == os.getpid()
    assert not (tmp_path / ".x.lock").exists() and not (tmp_path / ".x.lock.json").exists()


# --------------------------------------------------------------------------- unwritable


def test_a_workspace_under_a_file_is_one_sentence(tmp_path, fake_data_dir):
    (tmp_path / "file").write_text("x")
    result = invoke("fit", "--ed", "4", "--runs", tmp_path / "file" / "runs", *small(fake_data_dir))
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and "file" in result.said


def test_write_atomic_into_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AetoolError, match="Cannot write"):
        write_atomic(tmp_path / "file" / "sub" / "x.json", b"1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_workspace_is_one_sentence(ws, fake_data_dir):
    mode = ws.stat().st_mode
    ws.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = invoke("fit", "--name", "new", *small(fake_data_dir))
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "permission denied" in result.said.lower()
    finally:
        ws.chmod(mode)


def test_the_lock_of_a_run_in_a_folder_that_cannot_be_made_is_a_run_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="Cannot create the workspace"):
        runs.RunLock(tmp_path / "file" / "ws", "x").acquire()
