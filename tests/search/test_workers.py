"""`aetool search --workers` on one machine: the workers share the cores and train each point of
the grid once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from fsguard import guarded_env


def test_search_workers_share_the_cores_and_train_each_point_once(fake_data_dir, workspace):
    from collections import Counter

    from aetool.search.grid import SearchConfig
    from aetool.search.storage import open_storage

    grid = ["--ed", "3", "--ed", "5", "--lr", "1e-2", "--lr", "1e-3", "--lr", "1e-4",
            "--weight-decay", "1e-5", "--weight-decay", "1e-4", "--folds", "2", "--epochs",
            "3", "--batch-size", "50", "--val-size", "100", "--limit", "200", "--max-loss", "1"]
    env = guarded_env(AETOOL_RUNS=str(workspace), AETOOL_DATA=str(fake_data_dir),
                      OMP_NUM_THREADS="1", AETOOL_NO_ENTRYPOINTS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "aetool", "search", *grid, "--device", "cpu",
                           "--workers", "2", "--json"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["complete"] is True
    config = SearchConfig(eds=[3, 5], lrs=[1e-2, 1e-3, 1e-4], weight_decays=[1e-5, 1e-4],
                          folds=2, epochs=3, batch_size=50, val_size=100, limit=200,
                          max_loss=1.0)
    storage = open_storage(None, workspace)
    trials = storage.get_all_trials(storage.get_study_id_from_name(config.default_study_name()))
    complete = Counter((t.params["ed"], t.params["lr"], t.params["weight_decay"])
                       for t in trials if t.state.name == "COMPLETE")
    assert len(complete) == 12 and set(complete.values()) == {1}
    assert not [t for t in trials if t.state.name in ("FAIL", "RUNNING")]
    cores = len(os.sched_getaffinity(0))
    assert {t.user_attrs["threads"] for t in trials if t.state.name == "COMPLETE"} == {
        max(1, cores // 2)}
