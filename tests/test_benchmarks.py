"""The benchmark scripts run end to end on small data and report what they measured.

They are measurements, not tests of speed or accuracy: these tests only check that the
scripts work (tables, JSON, reuse of finished runs), on the fabricated data set.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from aetool.errors import AetoolError

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_trains_reuses_and_refuses_other_settings(
    fake_data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("AETOOL_DATA", str(fake_data_dir))
    accuracy = load_script("accuracy")
    args = ["--eds", "4", "--max-epochs", "2", "--batch-size", "100", "--val-size", "100",
            "--device", "cpu", "--workspace", str(tmp_path), "--json"]

    assert accuracy.main(args) == 2  # two epochs on 500 images do not beat the report
    rows = json.loads(capsys.readouterr().out)
    assert [r["ed"] for r in rows] == [4] and rows[0]["epochs"] == 2
    assert rows[0]["preset"] == "best" and rows[0]["settings"]["batch_size"] == 100
    assert rows[0]["target_test_mse"] == pytest.approx(0.0243)
    assert rows[0]["passed"] is False and rows[0]["test_mse"] > 0.0243

    assert accuracy.main(args) == 2  # the finished run is reused, not trained again
    out = capsys.readouterr()
    assert "reusing the finished run" in out.err
    assert json.loads(out.out)[0]["test_mse"] == rows[0]["test_mse"]

    with pytest.raises(AetoolError, match="other settings .*batch_size"):
        accuracy.main([*args[:5], "50", *args[6:]])


def test_speed_times_the_plain_loop_and_aetool(fake_data_dir, capsys):
    speed = load_script("speed")
    code = speed.main(["--device", "cpu", "--epochs", "1", "--batch-size", "100",
                       "--modes", "auto,eager", "--data-dir", str(fake_data_dir), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    text = json.dumps(result)
    assert "plain" in text and "eager" in text and "tuned" in text
