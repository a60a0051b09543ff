"""The tests' file-system guard (tests/guard): a write or deletion outside the tests' folders is
refused and fails the test, in the pytest process and in a subprocess, whoever makes the call
and even when the code under test catches the error; writes inside pass.

The folder "outside" is made fresh for each test by `mktemp` and removed by `rm`, programs that
the guard does not see, next to pytest's base temporary folder: no real system path is aimed at.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import fsguard
import pytest
from fsguard import GuardViolation, expect_violation, guarded_env


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under `folder`: its mode and, for a file, its bytes."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        entries[str(path.relative_to(folder))] = (path.lstat().st_mode, data)
    return entries


@pytest.fixture()
def outside(tmp_path_factory) -> Iterator[Path]:
    """A fresh folder outside every root of the guard, holding keep.txt and sub/."""
    parent = tmp_path_factory.getbasetemp().parent
    made = subprocess.run(["mktemp", "-d", "-p", str(parent), "aetool-guard-outside.XXXXXX"],
                          capture_output=True, text=True, check=True)
    folder = Path(made.stdout.strip())
    try:
        subprocess.run(["sh", "-c", 'echo precious > "$1/keep.txt" && mkdir "$1/sub"', "sh",
                        str(folder)], check=True)
        assert not fsguard.allowed(str(folder), str(folder.resolve()))
        yield folder
    finally:
        subprocess.run(["rm", "-rf", "--", str(folder)], check=True)


def test_the_session_is_guarded_and_scratch_files_go_to_basetemp(tmp_path_factory, tmp_path):
    basetemp = str(tmp_path_factory.getbasetemp().resolve())
    assert basetemp in fsguard.roots()
    assert str(tmp_path.resolve()).startswith(basetemp + os.sep)
    for name in ("TMPDIR", "MPLCONFIGDIR", "HYPOTHESIS_STORAGE_DIRECTORY"):
        assert os.environ[name].startswith(basetemp + os.sep), name
    assert tempfile.gettempdir().startswith(basetemp + os.sep)
    assert fsguard.GUARD_DIR in os.environ["PYTHONPATH"].split(os.pathsep)


def test_writes_inside_the_tests_folders_pass(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.txt").write_text("x")
    with open(tmp_path / "a" / "log", "a") as handle:
        handle.write("more")
    os.replace(tmp_path / "a" / "b" / "f.txt", tmp_path / "a" / "g.txt")
    os.symlink(tmp_path / "a" / "g.txt", tmp_path / "link")
    os.remove(tmp_path / "link")
    shutil.move(tmp_path / "a" / "g.txt", tmp_path / "h.txt")
    os.chmod(tmp_path / "h.txt", 0o600)
    sqlite3.connect(tmp_path / "db.sqlite").close()
    fd, name = tempfile.mkstemp()  # the session's temporary folder is inside basetemp
    os.close(fd)
    os.remove(name)
    shutil.rmtree(tmp_path / "a")
    os.makedirs(tmp_path.parent, exist_ok=True)  # an existing folder: nothing changes
    assert fsguard.logged() == []


OPERATIONS = {
    "open for writing": lambda d: open(d / "new.txt", "w"),
    "open for appending": lambda d: open(d / "keep.txt", "a"),
    "Path.write_text": lambda d: (d / "keep.txt").write_text("gone"),
    "os.open O_CREAT": lambda d: os.open(d / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
    "os.remove": lambda d: os.remove(d / "keep.txt"),
    "Path.unlink": lambda d: (d / "keep.txt").unlink(),
    "os.rename": lambda d: os.rename(d / "keep.txt", d / "moved.txt"),
    "os.rmdir": lambda d: os.rmdir(d / "sub"),
    "os.mkdir": lambda d: os.mkdir(d / "new"),
    "os.symlink": lambda d: os.symlink("/nowhere", d / "link"),
    "os.link": lambda d: os.link(d / "keep.txt", d / "hard"),
    "os.truncate": lambda d: os.truncate(d / "keep.txt", 0),
    "os.chmod": lambda d: os.chmod(d / "keep.txt", 0o777),
    "shutil.rmtree": lambda d: shutil.rmtree(d / "sub"),
    "shutil.rmtree(ignore_errors)": lambda d: shutil.rmtree(d, ignore_errors=True),
    "shutil.move": lambda d: shutil.move(d / "keep.txt", d / "sub"),
    "shutil.copy": lambda d: shutil.copy(d / "keep.txt", d / "copy.txt"),
    "sqlite3.connect": lambda d: sqlite3.connect(d / "new.db"),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_write_or_deletion_outside_is_refused_in_process(operation, outside):
    before = snapshot(outside)
    with expect_violation() as caught:
        OPERATIONS[operation](outside)
    assert str(outside.resolve()) in caught[0].resolved
    assert "outside the test's folders" in str(caught[0])
    assert snapshot(outside) == before


def test_moving_a_file_in_from_outside_is_refused(outside, tmp_path):
    with expect_violation() as caught:
        os.replace(outside / "keep.txt", tmp_path / "stolen.txt")
    assert caught[0].event == "os.rename"
    assert (outside / "keep.txt").read_text() == "precious\n"


def test_a_caught_violation_is_still_recorded(outside):
    """Code under test that swallows the error (`except BaseException`) does not hide it."""
    with expect_violation() as caught:
        try:
            os.remove(outside / "keep.txt")
        except BaseException:  # noqa: B036  (what careless code might do)
            pass
    assert len(caught) == 1 and isinstance(caught[0], GuardViolation)
    assert (outside / "keep.txt").exists()


def test_links_are_resolved_as_the_system_will(outside, tmp_path):
    link = tmp_path / "lock"
    link.symlink_to(outside / "keep.txt")
    with expect_violation() as caught:  # opening follows the link: the file outside
        link.write_text("note")
    assert caught[0].resolved == str((outside / "keep.txt").resolve())
    # O_NOFOLLOW and O_CREAT | O_EXCL do not follow it: the guard lets the system refuse.
    for flags in (os.O_WRONLY | os.O_NOFOLLOW, os.O_WRONLY | os.O_CREAT | os.O_EXCL):
        with pytest.raises(OSError):
            os.open(link, flags)
    os.remove(link)  # removes the link itself, inside
    assert (outside / "keep.txt").read_text() == "precious\n"


def test_a_path_relative_to_a_folder_descriptor_is_resolved(outside):
    fd = os.open(outside, os.O_RDONLY)
    try:
        with expect_violation() as caught:
            os.unlink("keep.txt", dir_fd=fd)
    finally:
        os.close(fd)
    assert caught[0].resolved == str((outside / "keep.txt").resolve())


def test_expect_violation_fails_when_nothing_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="expected to refuse"):
        with expect_violation():
            (tmp_path / "inside.txt").write_text("fine")


def python(code: str, log: Path, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=guarded_env(AETOOL_TEST_GUARD_LOG=str(log)), **popen)


def test_a_subprocess_that_writes_outside_is_stopped(outside, tmp_path):
    # Its own log, so that this deliberate violation does not fail the test.
    log = tmp_path / "expected.log"
    target = outside / "new.txt"
    done = python(f"open({str(target)!r}, 'w').write('x'); print('wrote')", log)
    assert done.returncode == fsguard.EXIT_CODE, done.stderr
    assert "wrote" not in done.stdout and not target.exists()
    assert f"open on {str(target)!r}" in done.stderr and "outside the test's folders" in done.stderr
    assert f"open on {str(target)!r}" in log.read_text()


def test_a_subprocess_cannot_swallow_it_and_its_workers_are_guarded(outside, tmp_path):
    log = tmp_path / "expected.log"
    code = textwrap.dedent(f"""
        import os, shutil, subprocess, sys
        try:
            shutil.rmtree({str(outside)!r}, ignore_errors=True)
        except BaseException:
            print("swallowed")
        """)
    done = python(code, log)
    assert done.returncode == fsguard.EXIT_CODE and "swallowed" not in done.stdout
    assert (outside / "keep.txt").exists()
    # A worker started with the inherited environment (as `aetool search` starts its workers).
    worker = f"import os; os.remove({str(outside / 'keep.txt')!r})"
    done = python(f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', "
                  f"{worker!r}]))", log)
    assert done.returncode == fsguard.EXIT_CODE, done.stderr
    assert (outside / "keep.txt").exists() and len(log.read_text().splitlines()) == 2


def test_a_test_that_swallows_a_violation_fails(outside, tmp_path):
    """A whole pytest session with the guard's plugin: the test catches the guard's error, and
    fails all the same, naming the path."""
    (tmp_path / "test_careless.py").write_text(textwrap.dedent(f"""
        def test_careless():
            try:
                open({str(outside / 'keep.txt')!r}, "w")
            except BaseException:
                pass

        def test_careful(tmp_path):
            (tmp_path / "fine.txt").write_text("inside")
        """))
    done = python("import sys, pytest; sys.exit(pytest.main(["
                  f"'-p', 'pytest_fsguard', '-p', 'no:cacheprovider', '-q', '--basetemp', "
                  f"{str(tmp_path / 'basetemp')!r}, 'test_careless.py']))",
                  tmp_path / "expected.log", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    assert "Written or deleted outside the test's folders" in done.stdout
    assert str(outside / "keep.txt") in done.stdout
    assert (outside / "keep.txt").read_text() == "precious\n"
