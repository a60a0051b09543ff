"""Careless and hostile values (issue 20, "Major"): a zero or an empty value is never read as
"not given", seeds and thread counts outside what the libraries take, `search --workers`
beyond the machine and workers that outlive their parent, `--storage` values that are neither
a URL nor a path, plugins that exit or are interrupted on import, noise plugins that fail or
return the wrong shape, and the messages of a few bad data files. Each ends in one sentence
and exit 2 (a bad value) or 1 (a problem found while running), never a traceback."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import ROOT
from fsguard import guarded_env
from typer.testing import CliRunner

from aetool import plugins
from aetool.cli import app
from aetool.config import FitConfig, preset_config
from aetool.data.files import load_npz
from aetool.errors import AetoolError, DataError, SettingError
from aetool.noises import Noise, NoiseParam, build_noise, registered_noises
from aetool.plugins import PluginWarning
from aetool.plugins.hookspecs import hookimpl
from aetool.search import storage as search_study
from aetool.search.grid import SearchConfig, check_search
from aetool.train.loop import fit

runner = CliRunner()
cli_fit = importlib.import_module("aetool.cli.fit")
BUILTINS = {"gaussian", "uniform", "occlusion"}
# One grid point, 2 folds of 10 images, 1 epoch: a search that finishes in seconds, so that a
# value the search wrongly accepts fails the test quickly instead of running a real search.
TINY = ["--ed", "3", "--lr", "1e-2", "--weight-decay", "0", "--folds", "2", "--epochs", "1",
        "--batch-size", "10", "--val-size", "100", "--limit", "20", "--device", "cpu"]
SEED_MAX = 2**32 - 1  # numpy and scikit-learn take seeds up to here


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output without Rich's box drawing and line wrapping, for substring checks."""
    return " ".join("".join(" " if c in "│╭╮╰╯─" else c for c in text).split())


def one_sentence(result, code: int, *needles: str) -> str:
    """Check that `result` exited with `code` and no traceback, naming every needle."""
    text = flat(result.output)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    for needle in needles:
        assert needle in text, result.output
    return text


@pytest.fixture()
def no_training(monkeypatch):
    """`fit` stops with exit 99 where it would start training, recording the settings."""
    reached = []

    def stop(config, *args, **kwargs):
        reached.append(config)
        raise typer.Exit(99)

    monkeypatch.setattr(cli_fit, "train_with_progress", stop)
    return reached


# --------------------------------------------------------------------------- zero is a value


@pytest.mark.parametrize("extra", [[], ["--time", "1m"], ["--force"]])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_epochs_zero_or_negative_is_refused_not_read_as_the_preset(
        value, extra, no_training, workspace):
    result = invoke("fit", "--name", "good", "--max-epochs", value, *extra)
    one_sentence(result, 2, "--max-epochs")
    assert not no_training and not workspace.exists()


def test_a_real_max_epochs_still_reaches_training(no_training, workspace):
    result = invoke("fit", "--max-epochs", "3", "--device", "cpu")
    assert result.exit_code == 99, result.output
    assert no_training[0].max_epochs == 3


@pytest.mark.parametrize("args, option", [
    (["fit", "--noise", ""], "--noise"), (["fit", "--noise", "  "], "--noise"),
    (["fit", "--model", ""], "--model"), (["search", "--model", ""], "--model"),
    (["corrupt", "--noise", ""], "--noise"), (["search", "--study-name", ""], "--study-name"),
    (["search", "--storage", ""], "--storage"),
])
def test_empty_specs_and_names_are_refused_everywhere(args, option, no_training,
                                                     fake_data_dir, tmp_path, workspace,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, *(TINY if args[0] == "search" else []), "--data-dir", fake_data_dir)
    one_sentence(result, 2, option)
    assert not no_training and not workspace.exists()


def test_the_library_refuses_empty_specs_too():
    for field, value in (("model", ""), ("noise", ""), ("noise", " ")):
        with pytest.raises(SettingError, match=field) as caught:
            preset_config(**{field: value})
        assert caught.value.field == field
    with pytest.raises(SettingError, match="study_name"):
        SearchConfig(study_name="").validate()
    with pytest.raises(SettingError, match="(?i)model"):
        SearchConfig(model="").validate()


# --------------------------------------------------------------------------- seeds, threads


@pytest.mark.parametrize("command, value", [
    ("fit", "99999999999999999999999"), ("fit", "-1"), ("fit", str(SEED_MAX + 1)),
    ("embed", "-1"), ("embed", "99999999999999999999999"), ("search", "-1"),
    ("corrupt", "-1"), ("corrupt", str(2**64)), ("study", "-1"),
])
def test_seeds_outside_0_to_2_32_exit_2_before_any_data_is_read(command, value, tmp_path,
                                                                  workspace):
    # Options are checked in the order given: the seed first, then a data set that is not
    # there (so that a seed wrongly accepted never starts a real run).
    result = invoke(command, "--seed", value, "--dataset", tmp_path / "missing.npz")
    one_sentence(result, 2, "--seed", str(SEED_MAX))
    assert not workspace.exists()


@pytest.mark.parametrize("command, value", [
    (["models", "check", "course"], "-1"), (["models", "check", "course"], str(2**64)),
    (["noises", "check", "gaussian"], "-1"), (["noises", "check", "gaussian"], str(2**64)),
])
def test_the_check_commands_take_the_same_seeds(command, value):
    one_sentence(invoke(*command, "--seed", value), 2, "--seed", str(SEED_MAX))


def test_the_library_refuses_such_seeds():
    from aetool.config import SEED_MAX as library_max

    assert library_max == SEED_MAX
    for seed in (-1, SEED_MAX + 1, 10**23):
        with pytest.raises(SettingError, match="seed") as caught:
            FitConfig(seed=seed).validate()
        assert caught.value.field == "seed"
        with pytest.raises(SettingError, match="(?i)seed"):
            SearchConfig(seed=seed).validate()
    FitConfig(seed=SEED_MAX).validate()  # the largest seed works


def test_absurd_thread_counts_exit_2_instead_of_crashing_libgomp(tmp_path):
    """`--threads 100000` once died with SIGSEGV inside libgomp: it is checked (1 to 4 per
    CPU core, never over 1024) before PyTorch is asked for them."""
    env = guarded_env(OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1", PYTHONPATH=str(ROOT),
                      AETOOL_RUNS=str(tmp_path / "runs"))
    done = subprocess.run(
        [sys.executable, "-m", "aetool", "fit", "--threads", "100000", "--data-dir",
         str(tmp_path / "no-data")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr)
    limit = min(1024, 4 * (os.cpu_count() or 1))
    assert "--threads" in flat(done.stderr) and f"at most {limit}" in flat(done.stderr)
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["0", "100000"])
def test_thread_counts_are_checked_for_every_command(value, workspace):
    for command in ("fit", "embed", "search"):
        result = invoke(command, "--threads", value, "--data-dir", workspace / "no-data")
        one_sentence(result, 2, "--threads")


# --------------------------------------------------------------------------- search workers


def test_more_workers_than_the_machine_holds_exit_2_naming_the_limit(fake_data_dir, workspace,
                                                                      monkeypatch):
    from aetool.search import grid, workers

    started = []
    monkeypatch.setattr(grid, "start_helpers", lambda *args, **kwargs: started.append(args) or [])
    limit, why = workers.worker_limit()
    assert 1 <= limit <= workers.cpu_cores() and why
    result = invoke("search", "--workers", "1000", *TINY, "--data-dir", fake_data_dir)
    one_sentence(result, 2, "--workers", f"at most {limit}", "1000")
    assert not started and not workspace.exists()


def test_a_worker_that_cannot_be_started_stops_the_others_in_one_sentence(monkeypatch):
    from aetool.search import workers as search_workers

    class Helper:
        def __init__(self, *args, **kwargs):
            if len(made) == 2:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            self.env, self.stopped = kwargs["env"], False
            made.append(self)

        def terminate(self):
            self.stopped = True

        def wait(self):
            return -15

    made: list[Helper] = []
    monkeypatch.setattr(search_workers.subprocess, "Popen", Helper)
    with pytest.raises(AetoolError, match="Could not start search worker 3 of 5 more") as caught:
        search_workers.start_workers(["aetool", "search"], 5)
    assert "Resource temporarily unavailable" in str(caught.value)
    assert len(made) == 2 and all(helper.stopped for helper in made)  # no orphans
    assert made[0].env[search_workers.PARENT_ENV] == str(os.getpid())


def _state(pid: int) -> str | None:
    """The process state letter of `pid` (None when it is gone); a zombie counts as ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


PARENT = """
import sys, time
from pathlib import Path
from aetool.search.grid import SearchConfig, start_helpers

config = SearchConfig(eds=[3], lrs=[1e-2], weight_decays=[1e-5], folds=2, epochs=100000,
                      batch_size=50, val_size=100, limit=200, max_loss=1.0, device="cpu")
helpers = start_helpers(config, Path(sys.argv[1]), Path(sys.argv[2]), 1, 1)
print(helpers[0].pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_search_workers_stop_when_their_parent_is_killed(fake_data_dir, tmp_path):
    """A worker that `search --workers` started stops (its trials failed, to be retried) when
    the process that started it dies, even by SIGKILL: no orphaned workers."""
    workspace = tmp_path / "runs"
    env = guarded_env(OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1", PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(workspace), str(fake_data_dir)],
                              env=env, stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        journal = workspace / "search" / "study.log"
        deadline = time.monotonic() + 120
        while not journal.exists() and time.monotonic() < deadline:  # the worker is training
            time.sleep(0.2)
        assert journal.exists() and _state(worker) not in (None, "Z")
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while _state(worker) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _state(worker) in (None, "Z"), "the worker outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if worker is not None and _state(worker) not in (None, "Z"):
            os.kill(worker, signal.SIGKILL)


# --------------------------------------------------------------------------- --storage


@pytest.mark.parametrize("value", ["sqlite:/x.db", "garbage:thing", "mysql:/db", "://x",
                                   "sqlite://", "postgresql:x", "nosuchdb://host/db"])
def test_a_storage_that_is_neither_a_url_nor_a_path_exits_2(value, fake_data_dir, tmp_path,
                                                              workspace, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("search", "--storage", value, *TINY, "--data-dir", fake_data_dir)
    one_sentence(result, 2, "--storage", "://")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no journal file appeared
    with pytest.raises(SettingError, match="storage"):  # checked where the search runs
        check_search(SearchConfig(storage=value))


@pytest.mark.parametrize("value", [None, "study.log", "sub/dir/s.log", "sqlite:///x.db",
                                   "postgresql://u:p@host/db", "postgresql+psycopg://h/db",
                                   "mysql://h/db", "redis://localhost:6379", r"C:\x\s.log"])
def test_urls_and_paths_pass_the_storage_rule(value):
    search_study.check_storage(value)
    SearchConfig(storage=value).validate()


@pytest.mark.parametrize("content", [b"garbage\n", b"[1, 2]\n", b"\x00\x01binary\n",
                                     b'{"op_code": 0}\nnot json\n'])
def test_a_garbage_journal_names_its_path(content, tmp_path):
    journal = tmp_path / "search" / "study.log"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(content)
    with pytest.raises(AetoolError) as caught:
        search_study.open_storage(None, tmp_path)
    assert str(journal) in str(caught.value) and "None" not in str(caught.value)
    assert not isinstance(caught.value, SettingError)


def test_a_journal_path_that_cannot_be_opened_names_it(tmp_path):
    folder = tmp_path / "a-folder.log"
    folder.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for path in (folder, blocker / "study.log"):
        with pytest.raises(AetoolError, match=re.escape(str(path))):
            search_study.open_storage(str(path), tmp_path)


def test_search_on_a_garbage_journal_exits_1_naming_it(fake_data_dir, workspace):
    journal = workspace / "search" / "study.log"
    journal.parent.mkdir(parents=True)
    journal.write_text("garbage\n")
    result = invoke("search", *TINY, "--data-dir", fake_data_dir)
    text = one_sentence(result, 1, str(journal))
    assert "storage None" not in text


# --------------------------------------------------------------------------- plugins on import


@pytest.fixture()
def plugin_module(fresh_plugins, tmp_path, monkeypatch):
    """Install a plugin module with `source` as the only `aetool` entry point."""
    made = []

    def install(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        entry = importlib.metadata.EntryPoint(name=name, value=name, group="aetool")
        monkeypatch.setenv("AETOOL_NO_ENTRYPOINTS", "0")
        monkeypatch.setattr(plugins, "_entry_points", lambda: [entry])
        made.append(name)
        return name

    yield install
    for name in made:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("source", ["import sys\nsys.exit(0)\n", "import sys\nsys.exit(3)\n",
                                    "raise KeyboardInterrupt\n", "raise SystemExit('bye')\n"])
def test_a_plugin_that_exits_or_is_interrupted_on_import_is_a_broken_plugin(
        source, plugin_module):
    name = plugin_module("aetool_test_exiting_plugin", source)
    result = invoke("noises", "--json")
    assert result.exit_code == 0, result.output
    assert {row["name"] for row in json.loads(result.stdout)} >= BUILTINS
    assert name in result.stderr and "Warning" in result.stderr
    assert result.stderr.count(name) == 1  # one warning


def test_fit_goes_on_past_a_plugin_that_exits_on_import(plugin_module, no_training,
                                                       workspace):
    name = plugin_module("aetool_test_exiting_plugin", "import sys\nsys.exit(0)\n")
    result = invoke("fit", "--noise", "gaussian:sigma=0.1", "--max-epochs", "1")
    assert result.exit_code == 99, result.output  # reached training: it did not stop at 0
    assert name in result.stderr and no_training[0].noise == "gaussian:sigma=0.1"


def test_the_library_warns_once_for_a_plugin_that_exits_on_import(plugin_module):
    name = plugin_module("aetool_test_exiting_plugin", "raise SystemExit(0)\n")
    with pytest.warns(PluginWarning, match=name):
        noises = registered_noises()
    assert BUILTINS <= set(noises)


class ExitingHookPlugin:
    @hookimpl
    def register_noises(self, register):
        sys.exit(0)


def test_a_plugin_whose_hook_exits_warns_and_the_rest_work(fresh_plugins):
    plugins.load_plugins()
    plugins.pm.register(ExitingHookPlugin(), name="exiting-hook-plugin")
    with pytest.warns(PluginWarning, match="exiting-hook-plugin"):
        noises = registered_noises()
    assert BUILTINS <= set(noises)


# --------------------------------------------------------------------------- noise plugins


def _explode(x, generator):
    raise RuntimeError("kaboom")


def _shrink(x, generator):
    return x[..., :14]


def _late(x, generator):
    if x.shape[0] > 3:  # works on a small batch, fails on a real one
        raise ValueError("too many images")
    return x.clone()


def _scaled(x, generator, factor=1.0):
    return x * factor


class BrokenNoisePlugin:
    @hookimpl
    def register_noises(self, register):
        register(Noise("explode", "Raises.", _explode))
        register(Noise("shrink", "Wrong shape.", _shrink))
        register(Noise("late", "Raises on batches of more than 3.", _late))
        register(Noise("scaled", "x * factor.", _scaled,
                       (NoiseParam("factor", float, 1.0, "the factor"),)))


@pytest.fixture()
def broken_noises():
    plugins.load_plugins()
    plugin = BrokenNoisePlugin()
    plugins.pm.register(plugin, name="broken-noise-plugin")
    yield plugin
    plugins.pm.unregister(plugin)


@pytest.mark.parametrize("name, needle", [("explode", "RuntimeError: kaboom"),
                                          ("shrink", "(4, 1, 28, 14)"),
                                          ("late", "ValueError: too many images")])
def test_a_noise_that_fails_or_returns_the_wrong_shape_names_its_plugin(name, needle,
                                                                       broken_noises):
    noise = build_noise(name)  # parses: a failure shows where the noise is used
    with pytest.raises(AetoolError) as caught:
        noise(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0))
    message = str(caught.value)
    assert "broken-noise-plugin" in message and repr(name) in message and needle in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["explode", "late"])
def test_fit_with_a_failing_noise_exits_1_naming_the_plugin(name, broken_noises,
                                                            fake_data_dir, workspace):
    result = invoke("fit", "--noise", name, "--max-epochs", "1", "--batch-size", "50",
                    "--val-size", "100", "--device", "cpu", "--data-dir", fake_data_dir)
    one_sentence(result, 1, "broken-noise-plugin", f"'{name}'")
    assert not (workspace / "ed4").exists()  # a start that failed leaves nothing


def test_corrupt_with_a_failing_noise_exits_1_naming_the_plugin(broken_noises, fake_split,
                                                                fake_data_dir, workspace):
    small = dataclasses.replace(fake_split, train=fake_split.train[:200],
                                train_labels=fake_split.train_labels[:200])
    fit(preset_config("report", ed=2, max_epochs=1, batch_size=100, device="cpu", patience=0),
        workspace / "tiny", split=small)
    for name in ("shrink", "late"):
        result = invoke("corrupt", "--noise", name, "--device", "cpu", "--data-dir",
                        fake_data_dir, "--examples", "0")
        one_sentence(result, 1, "broken-noise-plugin", f"'{name}'")


@pytest.mark.parametrize("spec", ["gaussian:sigma=1e308", "gaussian:sigma=1e30",
                                  "scaled:factor=1e300", "scaled:factor=-1e25"])
def test_noise_parameters_that_make_unusable_images_exit_2(spec, broken_noises, no_training,
                                                           workspace):
    for command in ("fit", "corrupt"):
        result = invoke(command, "--noise", spec, "--data-dir", workspace / "no-data")
        text = one_sentence(result, 2, "--noise")
        assert "learning rate" not in text
        assert "infinite" in text or "too large" in text
    assert not no_training
    with pytest.raises(AetoolError, match="infinite|too large"):
        build_noise(spec)
    build_noise("gaussian:sigma=100")  # large, but images a model can be trained on


# --------------------------------------------------------------------------- data file messages


def test_a_text_file_named_npz_is_not_a_valid_npz(tmp_path, workspace):
    path = tmp_path / "x.npz"
    path.write_text("hello, I am not an archive\n")
    with pytest.raises(DataError) as caught:
        load_npz(path)
    message = str(caught.value)
    assert "not a valid .npz" in message and str(path) in message
    assert "pickle" not in message.lower()
    result = invoke("fit", "--dataset", path, "--device", "cpu")
    text = flat(result.output)
    assert result.exit_code in (1, 2) and "not a valid .npz" in text
    assert "pickle" not in text.lower() and "Traceback" not in result.output


def test_an_npy_file_or_pickled_arrays_named_npz_are_refused_without_advice_to_unpickle(
        tmp_path):
    npy = tmp_path / "array.npz"
    with npy.open("wb") as handle:
        np.save(handle, np.zeros((3, 28, 28), dtype=np.uint8))
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_train=np.array([{"a": 1}], dtype=object),
             x_test=np.zeros((2, 28, 28), dtype=np.uint8))
    for path in (npy, objects):
        with pytest.raises(DataError) as caught:
            load_npz(path)
        assert str(path) in str(caught.value) and "allow_pickle" not in str(caught.value)


def test_an_npz_with_an_empty_class_list_says_so(tmp_path):
    images = np.zeros((6, 28, 28), dtype=np.uint8)
    path = tmp_path / "set.npz"
    np.savez(path, x_train=images, y_train=np.zeros(6, dtype=np.int64), x_test=images[:2],
             y_test=np.zeros(2, dtype=np.int64), classes=np.array([], dtype=str))
    with pytest.raises(DataError) as caught:
        load_npz(path)
    assert "classes" in str(caught.value) and "empty" in str(caught.value)
    assert "0 or more" not in str(caught.value)
