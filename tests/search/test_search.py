"""`aetool search`: the selection rule, the folds, a tiny grid end to end, `fit --from-search`,
resuming after an interrupt or a killed worker, two workers sharing one study, bad grids."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from fsguard import guarded_env
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import ProgressEvent, RunError
from aetool.search import grid as search
from aetool.search import storage as search_study
from aetool.search.grid import (
    GridStudy,
    SearchConfig,
    best_setting,
    fold_indices,
    open_storage,
    oscillation,
    run_search,
    select_best,
    summarize_setting,
)

runner = CliRunner()

# A tiny grid: 2 EDs x 2 lr x 1 wd, 2 folds of 100 images, 2 epochs; about a second in all.
TINY = ["--ed", "3", "--ed", "5", "--lr", "1e-2", "--lr", "1e-3", "--weight-decay", "1e-5",
        "--folds", "2", "--epochs", "2", "--batch-size", "50", "--val-size", "100",
        "--limit", "200", "--max-loss", "1", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def tiny_config(storage: Path | None = None, **overrides) -> SearchConfig:
    values = dict(eds=[3, 5], lrs=[1e-2, 1e-3], weight_decays=[1e-5], folds=2, epochs=2,
                  batch_size=50, val_size=100, limit=200, max_loss=1.0, device="cpu",
                  storage=str(storage) if storage else None)
    values.update(overrides)
    return SearchConfig(**values)


def study_trials(config: SearchConfig, root: Path) -> list:
    storage = open_storage(config.storage, root)
    study_id = storage.get_study_id_from_name(config.study_name or config.default_study_name())
    return storage.get_all_trials(study_id)


def point_of(trial) -> tuple:
    return (trial.params["ed"], trial.params["lr"], trial.params["weight_decay"])


def states_by_point(trials) -> dict[tuple, Counter]:
    table: dict[tuple, Counter] = {}
    for t in trials:
        table.setdefault(point_of(t), Counter())[t.state.name] += 1
    return table


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def subprocess_env(workspace: Path) -> dict[str, str]:
    return guarded_env(OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1",
                       AETOOL_RUNS=str(workspace), PYTHONPATH=str(ROOT))


# --------------------------------------------------------------------------- the selection rule


def test_oscillation_measures_upward_moves_in_the_second_half():
    assert oscillation([0.09, 0.07, 0.06, 0.05, 0.045, 0.04]) == 0.0
    assert oscillation([0.05]) == 0.0
    # second half 0.03, 0.06, 0.03, 0.06: rises 0.03 + 0.03 over a mean of 0.045
    assert oscillation([0.1, 0.08, 0.05, 0.04, 0.03, 0.06, 0.03, 0.06]) == pytest.approx(4 / 3)
    assert oscillation([0.1, float("nan"), 0.05, 0.04]) == math.inf
    assert oscillation([0.1, 0.05, None, 0.04]) == math.inf


def _setting(lr, final_vals, wiggle=0.0):
    val = [[0.09, 0.06, 0.05 + wiggle, 0.05, 0.05 + wiggle, v] for v in final_vals]
    train = [[0.1, 0.07, 0.05, 0.045, 0.04, v - 0.002] for v in final_vals]
    return summarize_setting(lr, 1e-5, train, val)


def test_selection_drops_diverging_and_oscillating_settings():
    settings = [
        _setting(1e-1, [0.03, 0.25]),  # diverges on fold 2 (final loss above 0.1)
        _setting(5e-2, [0.03, float("nan")]),  # NaN on fold 2
        _setting(3e-2, [0.028, 0.029], wiggle=0.04),  # lowest loss, but swings wildly
        _setting(1e-2, [0.031, 0.033]),  # the best well-behaved setting
        _setting(1e-3, [0.04, 0.041]),
    ]
    best = select_best(settings, max_loss=0.1, max_oscillation=0.5)
    assert best == {"lr": 1e-2, "weight_decay": 1e-5, "val_mean": pytest.approx(0.032),
                    "val_std": pytest.approx(0.001)}
    verdicts = [(s["kept"], s["reason"]) for s in settings]
    assert verdicts[0] == (False, "val 0.25 > 0.1 on fold 2")
    assert verdicts[1] == (False, "diverged on fold 2")
    assert not verdicts[2][0] and verdicts[2][1].startswith("oscillation")
    assert verdicts[3] == (True, None) and verdicts[4] == (True, None)
    assert settings[3]["gap"] == pytest.approx(0.002)
    # With a loose bound the oscillating setting wins on its lower loss.
    assert select_best(settings, max_loss=0.1, max_oscillation=10)["lr"] == 3e-2
    assert select_best(settings[:2], max_loss=0.1, max_oscillation=0.5) is None


def test_folds_are_sklearn_kfold_partitions():
    folds = fold_indices(11, 3, seed=0)
    assert [len(va) for _, va in folds] == [4, 4, 3]
    assert sorted(torch.cat([va for _, va in folds]).tolist()) == list(range(11))
    for tr, va in folds:
        assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == 11
    again = fold_indices(11, 3, seed=0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert not torch.equal(fold_indices(11, 3, seed=1)[0][1], folds[0][1])


# --------------------------------------------------------------------------- end to end


def test_tiny_grid_end_to_end_then_fit_from_search(fake_data_dir, workspace):
    result = invoke("search", *TINY, "--data-dir", fake_data_dir, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    saved = runs.load_json(workspace / "search" / "results.json")
    assert printed["grid"] == saved["grid"]
    assert saved["grid"]["ed"] == [3, 5] and saved["grid"]["folds"] == 2
    assert saved["complete"] is True
    for ed in ("3", "5"):
        entry = saved["eds"][ed]
        assert len(entry["settings"]) == 2
        for s in entry["settings"]:
            assert len(s["fold_val"]) == len(s["fold_train"]) == 2
            assert len(s["curves"]["val"]) == 2 and len(s["curves"]["val"][0]) == 2
            assert s["val_mean"] == pytest.approx(sum(s["fold_val"]) / 2)
            assert s["kept"] is True and s["reason"] is None
        best = entry["best"]
        assert best["val_mean"] == min(s["val_mean"] for s in entry["settings"])
        assert set(best) == {"lr", "weight_decay", "val_mean", "val_std"}

    chosen = best_setting(workspace, 5)
    assert chosen == {"lr": saved["eds"]["5"]["best"]["lr"], "weight_decay": 1e-5}
    fit = invoke("fit", "--ed", "5", "--from-search", "--max-epochs", "1", "--batch-size", "100",
                 "--val-size", "100", "--device", "cpu", "--data-dir", fake_data_dir, "--json")
    assert fit.exit_code == 0, fit.output
    config = runs.load_json(workspace / "ed5" / "config.json")
    assert (config["lr"], config["weight_decay"]) == (chosen["lr"], chosen["weight_decay"])

    # Running the same command again trains nothing and gives the same results.
    before = len(study_trials(tiny_config(), workspace))
    again = invoke("search", *TINY, "--data-dir", fake_data_dir, "--json")
    assert again.exit_code == 0, again.output
    assert len(study_trials(tiny_config(), workspace)) == before
    assert json.loads(again.stdout)["eds"] == printed["eds"]


def test_models_trained_together_give_the_results_of_one_at_a_time(fake_data_dir, tmp_path):
    one = run_search(tiny_config(parallel=1), tmp_path / "one", data_dir=fake_data_dir)
    together = run_search(tiny_config(parallel=4), tmp_path / "four", data_dir=fake_data_dir)
    for ed in ("3", "5"):
        for a, b in zip(one["eds"][ed]["settings"], together["eds"][ed]["settings"], strict=True):
            for kind in ("val", "train"):
                flat_a = [v for fold in a["curves"][kind] for v in fold]
                flat_b = [v for fold in b["curves"][kind] for v in fold]
                assert flat_b == pytest.approx(flat_a, rel=1e-3)


def test_running_out_of_gpu_memory_halves_the_group(fake_split, monkeypatch):
    from aetool.train.batched import Curves, TrainJob
    from aetool.train.loop import FitConfig

    sizes = []

    def fake_train(group, images, epochs, progress):
        sizes.append(len(group))
        if len(group) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [Curves([0.1], [0.1]) for _ in group]

    monkeypatch.setattr(search, "train_models", fake_train)
    jobs = [TrainJob(FitConfig(ed=3), torch.arange(10), torch.arange(10, 20))] * 6
    curves, parallel = search._train_units(jobs, fake_split.train, 1, 8, lambda n: None)
    assert len(curves) == 6 and parallel == 2 and sizes == [6, 4, 2, 2, 2]


def test_best_setting_explains_what_is_missing(tmp_path):
    with pytest.raises(RunError, match="run `aetool search` first"):
        best_setting(tmp_path, 4)
    results = {"grid": {}, "eds": {"4": {"settings": [], "best": None}}}
    runs.save_json(tmp_path / "search" / "results.json", results)
    with pytest.raises(RunError, match="did not cover ED 8"):
        best_setting(tmp_path, 8)
    with pytest.raises(RunError, match="No setting for ED 4 passed"):
        best_setting(tmp_path, 4)
    result = invoke("fit", "--ed", "8", "--from-search", "--runs", tmp_path)
    assert result.exit_code == 1 and "did not cover ED 8" in result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lr", "-1e-3"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--folds", "1"], "--folds"),
        (["--ed", "0"], "--ed"),
        (["--epochs", "0"], "--epochs"),
        (["--parallel", "0"], "--parallel"),
        (["--max-oscillation", "-1"], "--max-oscillation"),
    ],
)
def test_bad_grids_exit_2_with_a_clear_message(args, needle, workspace):
    result = invoke("search", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_library_refuses_bad_grids():
    with pytest.raises(search.AetoolError, match="at least one learning rate"):
        SearchConfig(lrs=[]).validate()
    with pytest.raises(search.AetoolError, match="Folds must be at least 2"):
        SearchConfig(folds=1).validate()


def test_a_study_name_used_with_other_settings_is_refused(fake_data_dir, workspace):
    first = invoke("search", *TINY, "--data-dir", fake_data_dir, "--study-name", "mine")
    assert first.exit_code == 0, first.output
    other = invoke("search", *TINY, "--data-dir", fake_data_dir, "--study-name", "mine",
                   "--epochs", "3")
    assert other.exit_code == 1
    assert "other settings" in other.output and "epochs" in other.output


# --------------------------------------------------------------------------- survival


def test_interrupted_search_resumes_and_trains_each_point_once(
    fake_data_dir, workspace, monkeypatch
):
    config = tiny_config()
    real = search.train_models
    calls = []

    def interrupt_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first point (2 folds) is done, the second is in flight
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "train_models", interrupt_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, workspace, data_dir=fake_data_dir)
    states = Counter(t.state.name for t in study_trials(config, workspace))
    assert states == {"COMPLETE": 1, "FAIL": 1}  # in flight: failed, so it is retried

    monkeypatch.setattr(search, "train_models", real)
    results = run_search(config, workspace, data_dir=fake_data_dir)
    assert results["complete"]
    table = states_by_point(study_trials(config, workspace))
    assert len(table) == 4 and all(c["COMPLETE"] == 1 for c in table.values())


def test_orphaned_trials_of_a_dead_worker_are_retried(fake_data_dir, workspace):
    from optuna.trial import TrialState

    config = tiny_config(eds=[3], lrs=[1e-2])
    storage = open_storage(None, workspace)
    study = GridStudy(config, storage, {"any": "protocol"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    [(trial_id, point)] = study.claim(config.grid())
    study.in_flight.clear()  # as if another process had claimed it...
    storage.set_trial_system_attr(trial_id, search_study.WORKER_ATTR,
                                  {"host": study.host, "pid": dead.pid})  # ...and died
    pending, done, elsewhere = study.status()
    assert pending == [point] and not elsewhere
    assert storage.get_trial(trial_id).state == TrialState.FAIL

    # On another host only the heartbeat tells: fresh is alive, stale is orphaned.
    [(trial_id, point)] = study.claim(config.grid())
    study.in_flight.clear()
    storage.set_trial_system_attr(
        trial_id, search_study.WORKER_ATTR, {"host": "elsewhere", "pid": 1}
    )
    assert study.status()[2] == {point}
    storage.set_trial_system_attr(trial_id, search_study.HEARTBEAT_ATTR, time.time() - 1000)
    assert study.status()[0] == [point]


def _wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_killed_worker_then_restart_finishes_each_point_once(fake_data_dir, workspace):
    journal = workspace / "shared.log"
    config = tiny_config(journal, lrs=[1e-2, 1e-3, 1e-4])
    args = [sys.executable, "-m", "aetool", "search", *TINY, "--lr", "1e-4",
            "--data-dir", str(fake_data_dir), "--storage", str(journal), "--parallel", "1"]
    worker = subprocess.Popen(args, env=subprocess_env(workspace), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def some_complete():
        if not journal.exists():
            return False
        try:
            return any(t.state.name == "COMPLETE" for t in study_trials(config, workspace))
        except KeyError:  # the study is not created yet
            return False

    try:
        assert _wait_for(some_complete), "the worker never completed a grid point"
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode != 0  # killed, not finished

    results = run_search(config, workspace, data_dir=fake_data_dir)
    assert results["complete"] and not results["missing"]
    trials = study_trials(config, workspace)
    table = states_by_point(trials)
    assert len(table) == 6
    assert all(c["COMPLETE"] == 1 and c["RUNNING"] == 0 for c in table.values())
    # What the killed worker had in flight was failed as orphaned, then trained again.
    for trial in trials:
        if trial.state.name == "FAIL":
            assert trial.system_attrs["aetool:failed"].startswith("orphaned")


def test_two_workers_share_one_study_and_split_the_grid(fake_data_dir, workspace):
    journal = workspace / "shared.log"
    grid = ["--ed", "3", "--ed", "5", "--lr", "1e-2", "--lr", "1e-3", "--lr", "1e-4",
            "--weight-decay", "1e-5", "--weight-decay", "1e-4"]
    args = [sys.executable, "-m", "aetool", "search", *TINY, *grid, "--data-dir",
            str(fake_data_dir), "--storage", str(journal), "--parallel", "1", "--json"]
    env = subprocess_env(workspace)
    workers = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
        assert json.loads(out)["complete"] is True

    config = tiny_config(journal, lrs=[1e-2, 1e-3, 1e-4], weight_decays=[1e-5, 1e-4])
    trials = study_trials(config, workspace)
    table = states_by_point(trials)
    assert len(table) == 12
    # One COMPLETE per point, nothing failed. (That no point is trained twice, even when both
    # workers claim it at once, is checked by counting trainings in the next test.)
    assert all(c["COMPLETE"] == 1 and c["FAIL"] == 0 for c in table.values())
    pids = Counter(t.system_attrs[search_study.WORKER_ATTR]["pid"] for t in trials
                   if t.state.name == "COMPLETE")
    assert set(pids) == {w.pid for w in workers}, f"one worker did everything: {pids}"
    assert json.loads(outputs[0][0])["eds"] == json.loads(outputs[1][0])["eds"]


def test_run_search_starts_its_own_workers_from_python(fake_data_dir, workspace, monkeypatch):
    """`run_search(..., workers=2)` starts one more worker process itself (no CLI): both claim
    grid points and the grid is complete. This worker waits, before its second group, until
    the helper has claimed a point, so both train whatever the machine's speed."""
    for name, value in guarded_env(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1").items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)  # the helper inherits this process's environment
    config = tiny_config(parallel=1, lrs=[1e-2, 1e-3, 1e-4])
    groups = []

    def on_train(group):
        groups.append(group)
        deadline = time.monotonic() + 120
        while len(groups) == 2 and time.monotonic() < deadline and not [
                t for t in study_trials(config, workspace)
                if t.system_attrs[search_study.WORKER_ATTR]["pid"] != os.getpid()]:
            time.sleep(0.2)

    events = []
    results = run_search(config, workspace, workers=2, threads=1, data_dir=fake_data_dir,
                         on_train=on_train, on_progress=events.append)
    assert results["complete"] is True
    assert events[-1] == ProgressEvent("search", 12, 12, "done", "models")  # the protocol
    trials = study_trials(config, workspace)
    table = states_by_point(trials)
    assert len(table) == 6 and all(c["COMPLETE"] == 1 and c["FAIL"] == 0
                                   for c in table.values()), table
    pids = {t.system_attrs[search_study.WORKER_ATTR]["pid"] for t in trials
            if t.state.name == "COMPLETE"}
    assert len(pids) == 2 and os.getpid() in pids, f"one worker did everything: {pids}"
    assert torch.get_num_threads() == 1  # this process's threads are as they were


def test_a_helper_reads_its_settings_back_with_their_checks(workspace):
    """What `run_search` tells a helper on stdin reads back as the same search; anything else
    is one sentence, and `python -m aetool.search` exits 1 (2 for a bad setting) with it."""
    from aetool.errors import AetoolError, SettingError

    config = tiny_config(workspace / "s.log", resize=True)
    text = search.helper_settings(config, workspace, None, 1)
    assert search.read_helper_settings(text) == (config, workspace.absolute(), None, 1)
    with pytest.raises(AetoolError, match="not what run_search writes: unknown setting 'nope'"):
        search.read_helper_settings(text.replace('"folds"', '"nope"'))
    with pytest.raises(SettingError, match="^Folds must be at least 2"):
        search.read_helper_settings(text.replace('"folds": 2', '"folds": 1'))
    for stdin, code in (("garbage", 1), (text.replace('"folds": 2', '"folds": 1'), 2)):
        done = subprocess.run([sys.executable, "-m", "aetool.search"], input=stdin, text=True,
                              env=subprocess_env(workspace), capture_output=True, timeout=120)
        assert done.returncode == code and done.stdout == "", done.stderr
        assert done.stderr.startswith("Error in search worker ") and \
            len(done.stderr.splitlines()) == 1, done.stderr


def test_two_workers_claiming_one_point_at_once_train_it_once(
    fake_data_dir, workspace, monkeypatch
):
    """Two workers ask for the same first point at the same moment. They are threads with a
    worker identity each (as on two hosts, so only the heartbeat tells whether the other is
    alive), and a barrier holds each one at its first claim twice: before it creates its
    RUNNING trial (so both have read the study and chosen the same pending point) and right
    after (so both claims exist before either looks for a collision). The later trial must be
    pruned before anything is trained, and every (point, fold) is trained once: counted by
    the `on_train` hook, which sees every model a worker trains."""
    from optuna.storages import JournalStorage

    config = tiny_config(workspace / "shared.log")
    monkeypatch.setattr(search_study, "host_identity",
                        lambda: f"host-{threading.current_thread().name}")
    barrier = threading.Barrier(2, timeout=60)
    first_claim_made = threading.local()
    create_new_trial = JournalStorage.create_new_trial

    def create_in_step_with_the_other(self, study_id, template_trial=None):
        if getattr(first_claim_made, "value", False):  # only a worker's first claim waits
            return create_new_trial(self, study_id, template_trial)
        first_claim_made.value = True
        barrier.wait()
        trial_id = create_new_trial(self, study_id, template_trial)
        barrier.wait()
        return trial_id

    monkeypatch.setattr(JournalStorage, "create_new_trial", create_in_step_with_the_other)
    trained: list[tuple[str, tuple]] = []  # (worker, grid point) per model trained
    errors: dict[str, BaseException] = {}

    def worker() -> None:
        name = threading.current_thread().name

        def on_train(group):
            trained.extend((name, (j.config.ed, j.config.lr, j.config.weight_decay))
                           for j in group)

        try:
            run_search(tiny_config(config.storage), workspace, data_dir=fake_data_dir,
                       on_train=on_train)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors[name] = exc

    threads = [threading.Thread(target=worker, name=name) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors

    first = config.grid()[0]
    key = (first.ed, first.lr, first.weight_decay)
    per_point = Counter(point for _, point in trained)
    assert per_point == {(p.ed, p.lr, p.weight_decay): config.folds for p in config.grid()}
    trials = study_trials(config, workspace)
    # One COMPLETE trial per point; every other trial is a claim that lost a collision. The
    # barrier forces one on the first point; later points may collide too when one worker
    # reads the study just before the other's claim lands (timing), which is the same rule.
    table = states_by_point(trials)
    assert len(table) == 4 and all(c["COMPLETE"] == 1 and set(c) <= {"COMPLETE", "PRUNED"}
                                   for c in table.values()), table
    assert table[key]["PRUNED"] == 1, "the forced collision should leave one pruned claim"

    def host(t):
        return t.system_attrs[search_study.WORKER_ATTR]["host"].removeprefix("host-")

    winners = {point_of(t): t for t in trials if t.state.name == "COMPLETE"}
    for loser in (t for t in trials if t.state.name == "PRUNED"):
        winner = winners[point_of(loser)]
        assert loser.number > winner.number
        assert loser.system_attrs["aetool:note"] == f"duplicate of trial {winner.number}"
        assert host(loser) != host(winner)
        assert (host(loser), point_of(loser)) not in trained, (
            "the worker whose claim lost trained the point anyway")
