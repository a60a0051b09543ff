"""The pytest side of the file-system guard (fsguard.py), registered by tests/conftest.py
(or with `-p pytest_fsguard` when this folder is on the path).

From configuration to the end of the session, nothing outside these roots is written or
deleted, by the tests, by aetool or by a library: pytest's base temporary folder (every
`tmp_path` and `tmp_path_factory` folder is inside), aetool's data cache (the real MNIST
tests fill it), and pytest's cache folder when that plugin is on. Libraries' scratch files and
caches are sent into the base temporary folder rather than allowed where they are: TMPDIR
(and `tempfile`), MPLCONFIGDIR, TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR and
HYPOTHESIS_STORAGE_DIRECTORY. The environment carries the guard to every subprocess.

After each phase of each test, the violations logged since (in this process, in a subprocess
or in a worker it started) fail that test, even when the code under test caught the error.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

import fsguard
import pytest


def declared_roots(config: pytest.Config, basetemp: Path) -> list[str]:
    """The folders the tests may write: the base temporary folder and the declared caches."""
    roots = [str(basetemp)]
    try:
        from aetool.data import default_data_root
    except ImportError:  # the guard used outside aetool's tests
        pass
    else:
        roots.append(str(default_data_root()))
    cache = getattr(config, "cache", None)
    if cache is not None and getattr(cache, "_cachedir", None):
        roots.append(str(cache._cachedir))
    return roots


def caches_inside(basetemp: Path) -> dict[str, str]:
    """Environment variables that send libraries' scratch files and caches into basetemp.

    Matplotlib's font list is copied from the user's cache, if there is one, so that it is not
    rebuilt on every session."""
    folders = {
        "TMPDIR": basetemp / "tmp",
        "MPLCONFIGDIR": basetemp / "matplotlib",
        "TORCHINDUCTOR_CACHE_DIR": basetemp / "torchinductor",
        "TRITON_CACHE_DIR": basetemp / "triton",
        "HYPOTHESIS_STORAGE_DIRECTORY": basetemp / "hypothesis",
    }
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    old_mpl = os.environ.get("MPLCONFIGDIR") or os.path.join(cache_home, "matplotlib")
    for fontlist in glob.glob(os.path.join(old_mpl, "fontlist-*.json")):
        shutil.copy(fontlist, folders["MPLCONFIGDIR"])
    return {name: str(folder) for name, folder in folders.items()}


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has made its factory
def pytest_configure(config: pytest.Config) -> None:
    basetemp = config._tmp_path_factory.getbasetemp().resolve()
    patch = pytest.MonkeyPatch()
    config.add_cleanup(patch.undo)
    for name, value in caches_inside(basetemp).items():
        patch.setenv(name, value)
    patch.setattr(tempfile, "tempdir", os.environ["TMPDIR"])
    fsguard.install(declared_roots(config, basetemp), str(basetemp / "fs-guard.log"))
    for name, value in fsguard.guarded_env().items():
        if os.environ.get(name) != value:
            patch.setenv(name, value)  # plain copies of os.environ guard subprocesses too


def _fail(report: pytest.TestReport, lines: list[str]) -> None:
    text = "\n".join(["Written or deleted outside the test's folders:", *lines])
    if report.failed and report.longrepr is not None:
        text = f"{report.longrepr}\n\n{text}"
    report.outcome = "failed"
    report.longrepr = text


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    lines = fsguard.logged()
    if lines:
        _fail(report, lines)
    return report


@pytest.hookimpl(tryfirst=True)  # before pytest itself cleans old folders and writes caches
def pytest_sessionfinish(session: pytest.Session) -> None:
    lines = fsguard.logged()
    fsguard.deactivate()
    if lines:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("Written or deleted outside the tests' folders, outside any "
                                "test:", red=True)
            for line in lines:
                reporter.write_line(line, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
