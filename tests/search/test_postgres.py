"""`aetool search` on a real PostgreSQL server (issue 15): the README's cluster recipe, checked.

scripts/test.sh starts a throwaway server from the distribution's package where it can and
passes its URL in AETOOL_TEST_POSTGRES (a plain `postgresql://` URL, as the README writes it;
the driver is the `aetool[postgres]` extra). Where no server could be had, these tests skip
with the reason (AETOOL_TEST_POSTGRES_SKIP). Each test works in a study of its own name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT
from fsguard import guarded_env

from aetool.search.grid import SearchConfig, run_search
from aetool.search.storage import database_url, open_storage

GRID = ["--ed", "3", "--lr", "1e-2", "--lr", "1e-3", "--lr", "1e-4", "--weight-decay", "1e-5",
        "--weight-decay", "1e-4", "--folds", "2", "--batch-size", "50", "--val-size", "100",
        "--limit", "200", "--max-loss", "1", "--device", "cpu", "--parallel", "1"]


def config(url: str, name: str, epochs: int) -> SearchConfig:
    return SearchConfig(eds=[3], lrs=[1e-2, 1e-3, 1e-4], weight_decays=[1e-5, 1e-4], folds=2,
                        epochs=epochs, batch_size=50, val_size=100, limit=200, max_loss=1.0,
                        device="cpu", parallel=1, storage=url, study_name=name)


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("AETOOL_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: " + os.environ.get(
            "AETOOL_TEST_POSTGRES_SKIP",
            "AETOOL_TEST_POSTGRES is not set (scripts/test.sh starts a server where it can)"))
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the PostgreSQL driver is missing: pip install -e '.[postgres]'")
    return url


def worker(url: str, name: str, epochs: int, workspace: Path, data_dir: Path,
           **popen) -> subprocess.Popen:
    env = guarded_env(OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1", AETOOL_RUNS=str(workspace),
                      AETOOL_DATA=str(data_dir), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "aetool", "search", *GRID, "--epochs", str(epochs),
            "--storage", url, "--study-name", name, "--threads", "1", "--json"]
    return subprocess.Popen(args, env=env, text=True, **popen)


def trials(url: str, name: str, workspace: Path) -> list:
    storage = open_storage(url, workspace)
    return storage.get_all_trials(storage.get_study_id_from_name(name))


def by_point(found: list) -> dict[tuple, Counter]:
    table: dict[tuple, Counter] = {}
    for t in found:
        key = (t.params["ed"], t.params["lr"], t.params["weight_decay"])
        table.setdefault(key, Counter())[t.state.name] += 1
    return table


def test_postgresql_urls_mean_psycopg_3():
    assert database_url("postgresql://u:p@db/aetool") == "postgresql+psycopg://u:p@db/aetool"
    assert database_url("postgres://db/aetool") == "postgresql+psycopg://db/aetool"
    assert database_url("postgresql+psycopg2://db/x") == "postgresql+psycopg2://db/x"
    assert database_url("sqlite:///s.db") == "sqlite:///s.db"


def test_two_workers_split_one_grid(postgres_url, fake_data_dir, workspace):
    name = f"split-{uuid.uuid4().hex[:10]}"
    workers = [worker(postgres_url, name, 2, workspace, fake_data_dir,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
        assert json.loads(out)["complete"] is True
    found = trials(postgres_url, name, workspace)
    table = by_point(found)
    assert len(table) == 6
    assert all(c["COMPLETE"] == 1 and c["FAIL"] == 0 and c["RUNNING"] == 0
               for c in table.values())
    assert json.loads(outputs[0][0])["eds"] == json.loads(outputs[1][0])["eds"]


def test_killed_worker_is_retried_and_a_rerun_trains_nothing(postgres_url, fake_data_dir,
                                                             workspace):
    name = f"kill-{uuid.uuid4().hex[:10]}"
    epochs = 40  # a trial takes a few seconds, so the kill lands inside one
    victim = worker(postgres_url, name, epochs, workspace, fake_data_dir,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            try:
                states = Counter(t.state.name for t in trials(postgres_url, name, workspace))
            except KeyError:  # the study is not created yet
                states = Counter()
            if states["RUNNING"]:
                break
            time.sleep(0.2)
        assert states["RUNNING"], "the worker never started a trial"
    finally:
        victim.kill()
        victim.wait()

    search = config(postgres_url, name, epochs)
    results = run_search(search, workspace, data_dir=fake_data_dir)
    assert results["complete"] and not results["missing"]
    found = trials(postgres_url, name, workspace)
    table = by_point(found)
    assert len(table) == 6 and all(c["COMPLETE"] == 1 for c in table.values())
    failed = [t for t in found if t.state.name == "FAIL"]
    assert failed and all(t.system_attrs["aetool:failed"].startswith("orphaned")
                          for t in failed)
    retried = {(t.params["lr"], t.params["weight_decay"]) for t in failed}
    assert all(table[(3, lr, wd)]["COMPLETE"] == 1 for lr, wd in retried)

    trained = []
    again = run_search(search, workspace, data_dir=fake_data_dir, on_train=trained.extend)
    assert trained == []
    assert again["eds"] == results["eds"]
